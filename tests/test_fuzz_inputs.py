"""Bad input, fuzzed: prompts, config overrides, dataset CSV rows and sprite images. Each case gets a clear
message (exit status 2, no traceback) or is handled, and nothing already there is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pikagen_jax.config_utils import load_config
from tests.conftest import REPO, make_kaggle_subset
from tests.launch_helpers import FAST_INIT_ENV, kaggle_overrides

PROMPTS_HANDLED = {
    "10,000 characters": "A small blue turtle with a shell. " * 295,
    "emoji": "🔥🐢⚡ a fiery turtle 🌊",
    "control characters": "A blue\x00 turtle\x07 with\x1b[31m red\r\n eyes\t.",
    "Japanese": "青いカメのポケモン。口から泡を吹く。",
    "Cyrillic": "Синяя черепаха с твёрдым панцирем.",
    "Arabic": "سلحفاة زرقاء ذات درع صلب",
}
PROMPTS_REFUSED = {"empty": "", "whitespace": " \t\n  "}


@pytest.fixture(scope="module")
def gan_run(small_data, tmp_path_factory):
    from pikagen_jax.gan.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("fuzz_gan")
    train_and_evaluate(load_config("configs/gan.py:smoke", kaggle_overrides(small_data) + ["train.num_steps=1"]),
                       workdir)
    return workdir


@pytest.mark.parametrize("kind", list(PROMPTS_HANDLED))
def test_odd_prompts_generate_sprites(gan_run, tmp_path, kind):
    from pikagen_jax import generate

    out = tmp_path / "grid.png"
    assert generate.main([f"--workdir={gan_run}", f"--prompt={PROMPTS_HANDLED[kind]}", "--num=2", f"--out={out}"]) == 0
    assert np.asarray(Image.open(out)).shape[0] >= 64


@pytest.mark.parametrize("kind", list(PROMPTS_REFUSED))
def test_empty_prompts_are_one_line(gan_run, tmp_path, capsys, kind):
    from pikagen_jax import generate

    assert generate.main([f"--workdir={gan_run}", f"--prompt={PROMPTS_REFUSED[kind]}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prompt #1 is empty") and "Traceback" not in err and len(err.splitlines()) <= 2


OVERRIDES = {  # override -> what the one-line message must say
    "train.batch_size=abc": "--config.train.batch_size=abc: invalid literal",
    "train.batch_size=0": "train.batch_size=0 must be positive",
    "train.batch_size=-8": "train.batch_size=-8 must be positive",
    "data.image_size=-64": "data.image_size=-64 is not supported",
    "train.num_steps=-5": "train.num_steps=-5 must be >= 0",
    "checkpoint.every_steps=0": "checkpoint.every_steps must be >= 1",
    "train.bacth_size=8": "did you mean batch_size",
    "train.diffaugment=blur": "unknown DiffAugment policy",
}


@pytest.mark.parametrize("override", list(OVERRIDES))
def test_bad_config_overrides_are_one_line_with_exit_status_2(small_data, tmp_path, override):
    cmd = [sys.executable, "launch.py", "--config=configs/gan.py:smoke", f"--workdir={tmp_path / 'w'}",
           *(f"--config.{o}" for o in kaggle_overrides(small_data)), f"--config.{override}"]
    proc = subprocess.run(cmd, cwd=REPO, env=FAST_INIT_ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and OVERRIDES[override] in errors[0], proc.stderr


def _source(tmp_path: Path, n: int = 12) -> Path:
    return make_kaggle_subset(tmp_path / "src", n)


def _build(source: Path, data_dir: Path, *extra: str):
    from data_prep import build

    return build.main(["--source=kaggle", f"--source_dir={source}", f"--data_dir={data_dir}", *extra])


def test_bad_sprite_files_are_skipped_or_converted(tmp_path, capsys):
    source = _source(tmp_path)
    sprites = source / "sprites"
    (sprites / "001.png").write_bytes(b"")  # zero bytes
    (sprites / "002.png").write_text("not an image at all")  # wrong format
    Image.new("RGB", (1, 1), (255, 0, 0)).save(sprites / "003.png")  # 1x1
    Image.open(sprites / "004.png").convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(sprites / "004.png")
    Image.open(sprites / "005.png").convert("RGB").convert("CMYK").save(sprites / "005.png", format="JPEG")  # CMYK
    grey16 = (np.asarray(Image.open(sprites / "006.png").convert("L"), np.uint16) * 257)
    Image.fromarray(grey16).save(sprites / "006.png")  # 16-bit greyscale
    Image.new("RGB", (5000, 5000), (10, 200, 30)).save(sprites / "007.png")  # 5000x5000
    assert _build(source, tmp_path / "tfds") == 0
    err = capsys.readouterr().err
    for number, reason in ((1, "empty (0 bytes)"), (2, "cannot decode"), (3, "too small")):
        assert f"#{number}" in err and reason in err, (number, err)
    config = load_config("configs/gan.py:smoke", [f"data.data_dir={tmp_path / 'tfds'}", "data.dataset=kaggle"])
    from pikagen_jax.metrics.split_eval import load_split

    numbers = {int(n) for split in ("train", "val", "test") for n in _numbers(config, split)}
    assert {4, 5, 6, 7} <= numbers and not {1, 2, 3} & numbers  # converted ones kept, broken ones skipped
    grey = [np.asarray(load_split(config, s).images) for s in ("train", "val", "test")]
    assert all(np.isfinite(g).all() for g in grey)


def _numbers(config, split):
    from pikagen_jax.data.pipeline import make_eval_loader

    try:
        return [n for batch in make_eval_loader(config, split, batch_size=8) for n in batch["national_number"]]
    except ValueError:  # an empty split is not written
        return []


def test_bad_csv_rows_are_skipped_and_broken_files_are_one_line_errors(tmp_path, capsys):
    source = _source(tmp_path)
    csv = source / "pokemon_data.csv"
    lines = csv.read_text(encoding="utf-8").splitlines()
    lines[2] = ";".join(lines[2].split(";")[:3])  # a row with too few fields
    cells = lines[3].split(";")
    cells[-1] = "x" * 200_000  # a huge description field
    lines[3] = ";".join(cells)
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _build(source, tmp_path / "tfds") == 0
    err = capsys.readouterr().err
    assert "too few fields" in err and "description of 200000 characters" in err
    # a broken quote swallows the rest of the file: one line naming where, and the old dataset stays
    lines[5] = lines[5].replace(";There", ';"There', 1) + ("y" * 2_000_000)
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _build(source, tmp_path / "tfds", "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "quoting" in err and "Traceback" not in err
    assert (tmp_path / "tfds" / "pokemon_sprites" / "kaggle" / "1.0.0" / "dataset_info.json").is_file()
    csv.write_text("national_number,english_name\n1,Bulbasaur\n", encoding="utf-8")  # wrong separator
    assert _build(source, tmp_path / "tfds2") == 2
    assert "missing column(s)" in capsys.readouterr().err
