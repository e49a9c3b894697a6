"""Sharing a trained model: export -> load -> generate equals the work directory's images for every system; bad
model folders are one clear error; the Gradio demo answers a real client (and, where Debian's chromium is
installed, a real headless browser), with readable messages for bad prompts, and is always stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pikagen_jax.config_utils import load_config
from tests.conftest import REPO
from tests.launch_helpers import FAST_INIT_ENV, kaggle_overrides
from tests.localhost import free_port, wait_until_listening

PROMPT = "A small blue turtle with a hard shell. It sprays water from its mouth."
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _train(system: str, small_data: dict, workdir: Path, *extra: str) -> Path:
    from pikagen_jax.config_utils import trainer_for

    trainer_for(system)(load_config(f"configs/{system}.py:smoke", kaggle_overrides(small_data) + list(extra)), workdir)
    return workdir


@pytest.fixture(scope="module")
def gan_workdir(small_data, tmp_path_factory):
    return _train("gan", small_data, tmp_path_factory.mktemp("export_gan"), "train.num_steps=2")


@pytest.fixture(scope="module")
def gan_model(gan_workdir, tmp_path_factory):
    from pikagen_jax import export

    out = tmp_path_factory.mktemp("models") / "gan_smoke"
    assert export.main([f"--workdir={gan_workdir}", f"--out={out}"]) == 0
    return out


def _images(source: Path, **options) -> np.ndarray:
    from pikagen_jax.data.pipeline import tokenizer_from_config
    from pikagen_jax.run_sampler import load_run_sampler

    sampler = load_run_sampler(source, **options)
    ids, mask = tokenizer_from_config(sampler.config)([PROMPT, "A fiery orange lizard."] * 2)
    return sampler.generate(ids, mask, 7)


def test_exported_gan_regenerates_the_workdir_images_bit_for_bit(gan_workdir, gan_model):
    np.testing.assert_array_equal(_images(gan_model), _images(gan_workdir))
    manifest = json.loads((gan_model / "model.json").read_text())
    assert manifest["items"] == ["ema_generator", "text_encoder"] and manifest["format_version"] == 1
    names = {p.name for p in (gan_model / "weights").iterdir()}
    assert names == {"ema_generator.safetensors", "text_encoder.safetensors"}  # no optimizer, no discriminator
    card = (gan_model / "README.md").read_text()
    assert "python -m pikagen_jax.generate --model=" in card and "step 2" in card
    assert (gan_model / "samples.png").is_file() and (gan_model / "tokenizer").is_dir()


def test_generate_takes_a_model_folder(gan_model, tmp_path):
    from pikagen_jax import generate

    out = tmp_path / "grid.png"
    assert generate.main([f"--model={gan_model}", f"--prompt={PROMPT}", "--num=2", f"--out={out}"]) == 0
    assert out.is_file()
    assert generate.main([f"--model={gan_model}", f"--prompt={PROMPT}", "--best"]) == 2


@pytest.mark.slow  # trains three more smoke systems
@pytest.mark.parametrize("system", ["l1", "diffusion", "dcgan"])
def test_every_system_exports_and_regenerates_the_same_images(system, small_data, tmp_path):
    from pikagen_jax import export

    workdir = _train(system, small_data, tmp_path / "run")
    out = export.export_run(workdir, tmp_path / "model")
    np.testing.assert_array_equal(_images(out), _images(workdir))


def test_bad_exports_and_bad_model_folders_are_clear_errors(gan_model, tmp_path, capsys):
    from pikagen_jax import export
    from pikagen_jax.model_folder import ModelFolderError, read_manifest

    assert export.main([f"--workdir={tmp_path / 'empty'}", f"--out={tmp_path / 'm'}"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(gan_model, broken)
    (broken / "weights" / "ema_generator.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"incomplete: weights/ema_generator.safetensors is missing"):
        read_manifest(broken)
    newer = tmp_path / "newer"
    shutil.copytree(gan_model, newer)
    manifest = json.loads((newer / "model.json").read_text())
    (newer / "model.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ModelFolderError, match="format version 99; this pikagen-jax reads up to version 1"):
        read_manifest(newer)
    with pytest.raises(ModelFolderError, match="has no model.json"):
        read_manifest(tmp_path)
    assert export.main([f"--workdir={tmp_path / 'empty'}", f"--out={gan_model}"]) == 2  # refuses to overwrite


# ------------------------------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo_server(gan_model):
    pytest.importorskip("gradio")
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "pikagen_jax.demo", f"--model={gan_model}", f"--port={port}"],
                              cwd=REPO, env=FAST_INIT_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    try:
        for line in server.stdout:
            log.append(line)
            if line.startswith("ready in"):
                break
        else:
            pytest.fail("the demo exited before it was ready:\n" + "".join(log[-40:]))
        assert wait_until_listening(port, 60, server), "the demo said ready but does not answer:\n" + "".join(log[-40:])
        yield {"url": f"http://127.0.0.1:{port}/", "startup": time.monotonic() - started, "log": "".join(log)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_demo_answers_prompts_and_keeps_serving_after_bad_ones(demo_server):
    from gradio_client import Client
    from PIL import Image

    client = Client(demo_server["url"], verbose=False)
    model_name = [line for line in demo_server["log"].splitlines() if line.startswith("loaded ")][0]
    model_name = model_name.removeprefix("loaded ").split(": sampler")[0]

    def ask(prompt, seed=0, num=2):
        return client.predict(model_name, prompt, seed, num, "ddim", 50, 3.0, api_name="/generate")

    started = time.monotonic()
    grid, maps, status = ask(PROMPT, seed=1)
    answer_seconds = time.monotonic() - started
    first = np.asarray(Image.open(grid))
    assert first.shape == (64, 2 * 64 + 2, 3) and "2 sprite(s)" in status
    assert len(maps) >= 1  # word-to-region maps of the first sprite
    other = np.asarray(Image.open(ask(PROMPT, seed=2)[0]))
    assert not np.array_equal(first, other)  # another seed, other sprites
    np.testing.assert_array_equal(np.asarray(Image.open(ask(PROMPT, seed=1)[0])), first)  # same seed, same sprites
    for bad, message in (("", "Please type a description"), ("x" * 10_000, "10000 characters"),
                         ("\x00\x01\x02", "only control characters")):
        grid, _, status = ask(bad)
        assert grid is None and message in status
    grid, _, status = ask("A blue\x07 turtle")  # control characters removed, the rest generated
    assert grid is not None and "Removed 1 control character" in status
    assert ask(PROMPT)[0] is not None  # still serving
    print(f"demo start-up {demo_server['startup']:.1f} s, first answer {answer_seconds:.2f} s")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_demo_in_a_real_headless_browser(demo_server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo_server["url"], timeout=60_000)
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#generate").click()
            page.locator("#grid img").wait_for(state="visible", timeout=60_000)
            page.locator("#status").get_by_text("sprite(s) in").wait_for(timeout=60_000)
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("PIKAGEN_DEMO_SCREENSHOT"):
                shutil.copy(shot, os.environ["PIKAGEN_DEMO_SCREENSHOT"])
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
