"""Seed 000/001 training end to end: smoke run from launch.py, config, optimizer parity with PyTorch, figures,
grid search (with a failing run), and the CLIP loss through our JAX CLIP, checked against transformers'
PyTorch CLIP (tiny random weights)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from pikagen_jax.config_utils import load_config
from pikagen_jax.l1 import report
from tests.conftest import REPO, TINY_CLIP_COSINE_PATH
from tests.tolerances import EPS32, assert_within, max_abs, path_tolerance


def _data_overrides(small_data) -> list[str]:
    return [f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['kaggle']}"]


@pytest.fixture(scope="module")
def smoke_run(small_data, tmp_path_factory):
    """`launch.py --config=configs/l1.py:smoke` in a subprocess, as a user runs it."""
    workdir = tmp_path_factory.mktemp("l1_smoke")
    cmd = [sys.executable, "launch.py", "--config=configs/l1.py:smoke", f"--workdir={workdir}",
           *(f"--config.{item}" for item in _data_overrides(small_data))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc.stderr


def test_smoke_run_writes_checkpoints_events_results_and_figures(smoke_run):
    workdir, log = smoke_run
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert "recompilation(s) after" in log and " 0 recompilation(s) after" in log  # compiled in step 1 only
    for item in ("model", "optimizer", "data_iterator", "config"):
        assert (workdir / "checkpoints" / "4" / item).is_dir(), item
    best_steps = [p.name for p in (workdir / "best").iterdir()]
    assert len(best_steps) == 1 and best_steps[0] in ("2", "4")
    assert list(workdir.glob("events.out.tfevents.*"))
    assert "step 4/4" in log and "l1" in log

    curve = json.loads((workdir / "learning_curves.json").read_text())
    assert [p["step"] for p in curve] == [2, 4]
    assert all(0.0 < p["val_l1"] < 2.0 and 0.0 < p["train_l1_epoch"] < 2.0 for p in curve)
    results = json.loads((workdir / "results.json").read_text())
    assert results["checkpoint"] == "best" and str(results["step"]) == best_steps[0]
    best_point = next(p for p in curve if p["step"] == results["step"])
    assert results["best_val_l1"] == min(p["val_l1"] for p in curve)
    # the best checkpoint was restored: its validation L1 is reproduced exactly (deterministic evaluation)
    np.testing.assert_allclose(results["val_l1"], best_point["val_l1"], rtol=1e-6)
    for split in ("train", "val", "test"):
        assert 0.0 < results[f"{split}_l1"] < 2.0 and results[f"{split}_count"] > 0
    assert results["test_clip_score"] is None  # no CLIP model configured

    assert Image.open(workdir / "learning_curves.png").size == (800, 500)
    assert (workdir / "learning_curves.pdf").read_bytes().startswith(b"%PDF")
    for split in ("train", "val"):
        sheet = np.asarray(Image.open(workdir / "sheets" / f"{split}_step_0000004.png"))
        assert sheet.shape[0] > 2 * 64 and sheet.shape[1] > 3 * 64  # 2 rows (truth, prediction) x 3 examples
        assert (workdir / "sheets" / f"{split}_step_0000004.pdf").is_file()


def test_final_config_is_seed_001_and_schedule_counts_epochs(small_data):
    from pikagen_jax.l1.state import make_optimizer, model_config
    from pikagen_jax.l1.train import resolve_schedule
    from pikagen_jax.models.l1_model import L1ModelConfig

    config = load_config("configs/l1.py", _data_overrides(small_data))
    assert config.system == "l1" and config.data.image_size == 215 and config.data.dataset
    assert config.data.captions.enriched == 1.0 and config.data.augment.rotations == 8
    assert (config.train.batch_size, config.train.num_epochs) == (10, 100)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.weight_decay_mode) == (1e-4, 1e-5, "l2")
    assert (config.checkpoint.best_metric, config.checkpoint.best_mode) == ("val_l1", "min")
    model = model_config(config)
    assert (model.encoder_layers, model.encoder_heads, model.encoder_ff_dim, model.image_size) == (2, 4, 1024, 215)
    assert model.encoder_dropout == model.attention_dropout == model.decoder_dropout == 0.3
    assert model.decoder_channels == L1ModelConfig().decoder_channels
    assert isinstance(make_optimizer(config.optim).init({"w": jnp.zeros(2)}), tuple)

    resolved, per_epoch = resolve_schedule(config)
    from pikagen_jax.data.pipeline import steps_per_epoch
    assert per_epoch == steps_per_epoch(config) * 8  # one epoch = the 8 stored rotations of seed 000
    assert resolved.train.num_steps == 100 * per_epoch and resolved.eval.every_steps == per_epoch
    assert resolved.train.sample_every == 10 * per_epoch
    assert config.train.num_steps == 0  # the original is untouched
    with pytest.raises(KeyError, match="encoder_heads"):
        load_config("configs/l1.py", ["model.encoder_head=2"])


@pytest.mark.parametrize("overrides,match", [
    ({"loss.kind": "clip"}, "clip.checkpoint"), ({"loss.kind": "l1+clip"}, "No CLIP weights exist offline"),
    ({"loss.kind": "l2"}, "loss.kind"), ({"optim.weight_decay_mode": "adamw"}, "weight_decay_mode"),
    ({"model.attention_dim": 10, "model.attention_heads": 4}, "divisible"),
])
def test_bad_configs_fail_early_with_the_fix(overrides, match):
    from pikagen_jax.l1.state import validate_config

    with pytest.raises(ValueError, match=match):
        validate_config(load_config("configs/l1.py", overrides))


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_optimizer_matches_torch_adam_with_weight_decay(mode):
    """'l2' = torch.optim.Adam(weight_decay) (the seed's), 'decoupled' = torch.optim.AdamW."""
    import ml_collections
    import torch

    from pikagen_jax.l1.state import make_optimizer

    optim = ml_collections.ConfigDict({"lr": 1e-2, "weight_decay": 0.1, "weight_decay_mode": mode, "b1": 0.9,
                                       "b2": 0.999})
    rng = np.random.default_rng(0)
    w0, target = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    tx = make_optimizer(optim)
    w = jnp.asarray(w0)
    opt_state = tx.init(w)
    torch_w = torch.tensor(w0, requires_grad=True)
    torch_cls = torch.optim.Adam if mode == "l2" else torch.optim.AdamW
    torch_opt = torch_cls([torch_w], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        grad = jax.grad(lambda v: jnp.sum((v - target) ** 2 * jnp.arange(1, 6)))(w)
        updates, opt_state = tx.update(grad, opt_state, w)
        w = w + updates
        torch_opt.zero_grad()
        (((torch_w - torch.tensor(target)) ** 2) * torch.arange(1, 6)).sum().backward()
        torch_opt.step()
    # Adam's update is elementwise (no long sums): per step each side rounds the gradient (3 ops), the moments,
    # bias corrections, sqrt, division and decay (~12 ops on values of order lr = 1e-2) and the weight update
    # (2 ops on values of order |w|), in its own order. Five steps, errors added: 5 * (12 * 1e-2 + 2 * max|w|) * eps.
    tol = 5 * (12 * 1e-2 + 2 * max_abs(torch_w.detach().numpy())) * EPS32
    assert_within(np.asarray(w), torch_w.detach().numpy(), tol, f"Adam ({mode}) weights after 5 steps vs torch")


def test_curve_history_resumes_and_figures_draw(tmp_path):
    history = report.CurveHistory(tmp_path / "curve.json")
    for step in (10, 20, 30):
        history.record(step, step / 10, {"train_l1_epoch": 0.5 / step, "val_l1": 0.3})
    resumed = report.CurveHistory(tmp_path / "curve.json")  # a crashed run resumed from step 20's checkpoint
    resumed.record(30, 3.0, {"train_l1_epoch": 0.1, "val_l1": float("nan")})
    assert [p["step"] for p in resumed.points] == [10, 20, 30] and resumed.points[-1]["train_l1_epoch"] == 0.1
    resumed.record(20, 2.0, {"train_l1_epoch": 0.2, "val_l1": 0.25})
    assert [p["step"] for p in report.CurveHistory(tmp_path / "curve.json").points] == [10, 20]

    chart = np.asarray(report.draw_learning_curves(resumed.points, {"train_l1_epoch": "train", "val_l1": "val"}))
    assert chart.shape == (500, 800, 3)
    assert (np.abs(chart.astype(int) - report.COLORS[0]).sum(-1) == 0).sum() > 20  # the train line is drawn
    assert (np.abs(chart.astype(int) - report.COLORS[1]).sum(-1) == 0).sum() > 20
    empty = np.asarray(report.draw_learning_curves([], {"val_l1": "val"}))
    assert (np.abs(empty.astype(int) - report.COLORS[1]).sum(-1) == 0).sum() == 0

    truth = -np.ones((2, 16, 16, 3), np.float32)
    truth[1] = 1.0
    sheet = report.prediction_sheet(truth, np.zeros_like(truth), ["A Pokémon’s caption", "x"], title="t")
    assert sheet.dtype == np.uint8 and sheet.shape[1] > 2 * 16
    assert report.printable("Pokémon’s … café") == "Pokemon's ... cafe"
    with pytest.raises(ValueError, match="captions"):
        report.prediction_sheet(truth, truth, ["one"])
    paths = report.save_figure(sheet, tmp_path / "s.png", pdf=True)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)


def test_grid_parsing_and_run_names():
    from pikagen_jax.l1 import sweep

    grid = sweep.parse_grid(["optim.lr=1e-4,3e-4", "model.decoder_channels=(8,4),(4,4)"])
    assert grid == {"optim.lr": ["1e-4", "3e-4"], "model.decoder_channels": ["(8,4)", "(4,4)"]}
    assert len(sweep.parse_grid([], seed_grid=True)) == 5
    assert sweep.run_name({"optim.lr": "1e-4", "model.decoder_channels": "(8,4)"}) == \
        "optim.lr=1e-4__model.decoder_channels=-8-4-"
    with pytest.raises(ValueError, match="key=v1,v2"):
        sweep.parse_grid(["optim.lr"])
    with pytest.raises(ValueError, match="empty value"):
        sweep.parse_grid(["optim.lr=1e-4,"])


def test_sweep_records_a_failed_run_and_resumes(small_data, tmp_path):
    from pikagen_jax.l1 import sweep

    fixed = _data_overrides(small_data) + ["train.num_steps=2", "eval.every_steps=2", "eval.splits=('val','test')"]
    # 256-wide BERT-mini: 2 heads work, 3 do not divide the width -> that run fails at model construction
    grid = {"model.encoder_heads": ["2", "3"]}
    records = sweep.run_sweep("configs/l1.py:smoke", tmp_path, grid, fixed)
    assert [r.status for r in records] == ["done", "failed"]
    assert "divisible" in records[1].error
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("run,status,model.encoder_heads,best_val_l1,best_epoch,train_l1,val_l1,test_l1,clip_score")
    done, failed = rows[1].split(","), rows[2].split(",")
    assert done[:3] == ["model.encoder_heads=2", "done", "2"] and 0.0 < float(done[3]) < 2.0
    assert done[8] == "n/a"  # no CLIP model
    assert failed[1] == "failed" and "divisible" in rows[2]
    markdown = (tmp_path / "results.md").read_text()
    assert "1/2 runs done" in markdown and "Best by validation L1: `model.encoder_heads=2`" in markdown

    status = tmp_path / "model.encoder_heads=2" / sweep.STATUS_FILE
    before = status.stat().st_mtime_ns
    again = sweep.run_sweep("configs/l1.py:smoke", tmp_path, grid, fixed, retry_failed=False)
    assert [r.status for r in again] == ["done", "failed"] and status.stat().st_mtime_ns == before
    assert again[0].results["val_l1"] == records[0].results["val_l1"]


def _torch_clip_loss(reference, images, clip_ids, clip_mask, size=32):
    """transformers' CLIP: mean(1 − cos) of the images (through our JAX preprocessing, as a leaf tensor that
    collects d/dpixels) and the captions; returns (loss, pixels)."""
    import torch

    from pikagen_jax.losses.l1_clip import clip_image_preprocess

    pixels = torch.tensor(np.asarray(clip_image_preprocess(jnp.asarray(images), size)).transpose(0, 3, 1, 2),
                          requires_grad=True)
    image_features = reference.get_image_features(pixels).pooler_output
    with torch.no_grad():
        text_features = reference.get_text_features(torch.tensor(np.asarray(clip_ids), dtype=torch.long),
                                                    attention_mask=torch.tensor(np.asarray(clip_mask),
                                                                                dtype=torch.long)).pooler_output
    loss = (1 - torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)).mean()
    return loss, pixels


def test_jax_clip_loss_and_gradient_match_torch(tiny_clip_dir):
    """The CLIP loss the train step differentiates (JAX CLIP, no host callback) vs transformers' autograd."""
    transformers = pytest.importorskip("transformers")

    from pikagen_jax.losses.l1_clip import clip_image_preprocess, clip_loss
    from pikagen_jax.models.clip import CLIPModel

    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    reference = transformers.CLIPModel.from_pretrained(tiny_clip_dir).eval()
    images = np.random.default_rng(0).uniform(-0.9, 0.9, (2, 40, 40, 3)).astype(np.float32)
    ids, mask = clip.tokenizer()(["a blue turtle", "a fiery lizard"])

    @nnx.jit
    def loss_and_grads(model, images, pixels):
        text = model.text_embeds(ids, mask)
        by_images = jax.value_and_grad(lambda x: clip_loss(model.image_embeds(x), text))(images)
        by_pixels = jax.grad(lambda p: clip_loss(model.pixel_embeds(p), text))(pixels)
        return by_images, by_pixels

    pixels = clip_image_preprocess(jnp.asarray(images), 32)
    (value, grad), grad_pixels = loss_and_grads(clip, jnp.asarray(images), pixels)
    torch_value, torch_pixels = _torch_clip_loss(reference, images, ids, mask)
    torch_value.backward()
    # The loss is 1 - mean cosine: the tiny CLIP's cosine path (tests/conftest.py). A gradient is reached through
    # the forward path and back through the same sums transposed: twice the path, in units of its largest value.
    assert abs(float(value) - torch_value.item()) <= path_tolerance(TINY_CLIP_COSINE_PATH)
    expected_pixels = torch_pixels.grad.numpy().transpose(0, 2, 3, 1)
    gradient_tol = lambda g: path_tolerance(2 * TINY_CLIP_COSINE_PATH, max_abs(g))  # noqa: E731
    assert_within(grad_pixels, expected_pixels, gradient_tol(expected_pixels), "d loss / d pixels")
    # chain rule through the JAX preprocessing: d/dimages = J_preprocess^T · torch's d/dpixels
    _, pullback = jax.vjp(lambda x: clip_image_preprocess(x, 32), jnp.asarray(images))
    expected = np.asarray(pullback(jnp.asarray(expected_pixels))[0])
    assert_within(grad, expected, gradient_tol(expected), "d loss / d images")
    assert np.abs(expected).max() > 0


@pytest.mark.slow  # ~30-60 s on 2 busy cores: compiles the L1 + CLIP train step
def test_l1_plus_clip_step_trains_through_jax_clip(small_data, tiny_clip_dir):
    """One jitted L1 + CLIP step on a real pipeline batch: the in-step CLIP loss equals transformers' on the
    same prediction, the step has no host callback, and the model trains (CLIP stays frozen)."""
    transformers = pytest.importorskip("transformers")

    from pikagen_jax.data.pipeline import make_train_loader
    from pikagen_jax.l1.state import L1State, validate_config
    from pikagen_jax.l1.steps import l1_step
    from pikagen_jax.l1.train import with_clip_tokens
    from pikagen_jax.models.clip import CLIPModel

    config = load_config("configs/l1.py:smoke", _data_overrides(small_data) + [
        "loss.kind=l1+clip", "loss.clip_weight=0.5", f"clip.checkpoint={tiny_clip_dir}", "text.max_length=8"])
    validate_config(config)
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    config = with_clip_tokens(config, clip)
    batch = next(iter(make_train_loader(config)))
    assert batch["clip_token_ids"].shape == (4, 77) and np.all(batch["clip_token_ids"][:, 0] == 49406)
    assert np.all(np.sum(batch["clip_token_ids"] == 49407, axis=1) == 1)  # one end token per caption
    batch = {k: v for k, v in batch.items() if k != "national_number"}
    state = L1State(config, rngs=nnx.Rngs(0), clip=clip)
    pred = nnx.jit(lambda model, ids, mask: model(ids, mask))(nnx.clone(state.model), batch["token_ids"],
                                                              batch["attention_mask"])  # the step's draws
    before = np.asarray(state.model.decoder.to_rgb.kernel[...])
    clip_before = np.asarray(clip.vision_model.patch_embedding.kernel[...])
    step = nnx.jit(lambda s, b: l1_step(s, b, config))
    assert "callback" not in step.lower(state, batch).as_text()  # CLIP runs in the compiled step
    metrics = step(state, batch)
    assert int(metrics["skipped"]) == 0
    reference = transformers.CLIPModel.from_pretrained(tiny_clip_dir).eval()
    torch_loss, _ = _torch_clip_loss(reference, pred, batch["clip_token_ids"], batch["clip_attention_mask"])
    assert abs(float(metrics["clip_loss"]) - torch_loss.item()) <= path_tolerance(TINY_CLIP_COSINE_PATH)
    np.testing.assert_allclose(float(metrics["loss"]), float(metrics["l1"]) + 0.5 * float(metrics["clip_loss"]),
                               rtol=1e-5)
    assert math.isfinite(float(metrics["grad_norm"]))
    assert not np.array_equal(before, np.asarray(state.model.decoder.to_rgb.kernel[...]))
    np.testing.assert_array_equal(clip_before, np.asarray(state.clip.vision_model.patch_embedding.kernel[...]))
