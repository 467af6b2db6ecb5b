"""The affine resampler (geometry, against np.rot90 and torch's grid_sample) and the augmentation
registry: semantics, determinism, dtype and input preservation, option validation, the preview grid."""

from __future__ import annotations

import numpy as np
import pytest

from nntrain.data import affine
from nntrain.data.augment import AUGMENTATIONS, Augment, Augmentation, build_augment
from nntrain.errors import ConfigError
from nntrain.options import Option

ALL_SPECS = [{"type": "random_shift", "max_pixels": 2}, {"type": "random_rotate", "degrees": 15},
             {"type": "random_scale", "min": 0.8, "max": 1.2}, {"type": "random_crop", "padding": 3},
             {"type": "horizontal_flip", "p": 0.5}, {"type": "gaussian_noise", "std": 0.1},
             {"type": "cutout", "size": 6, "p": 0.7}]


def batch(n=6, c=3, h=12, w=12, seed=0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c, h, w)).astype(dtype)


def dot(h=9, w=9, r=4, c=4) -> np.ndarray:
    x = np.zeros((1, 1, h, w), np.float32)
    x[0, 0, r, c] = 1.0
    return x


# --- affine resampler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dx, dy", [(3, 0), (0, -2), (2, 3), (-4, 1)])
def test_shift_moves_a_known_pixel_by_k(mode, dx, dy):
    out = affine.shift(dot(r=4, c=4), dx, dy, mode=mode)
    assert out[0, 0, 4 + dy, 4 + dx] == 1.0 and out.sum() == 1.0


def test_shift_fills_with_zeros_and_half_pixel_shift_interpolates():
    x = batch(2, 2, 5, 7)
    s = affine.shift(x, 2, 1)
    np.testing.assert_array_equal(s[:, :, 1:, 2:], x[:, :, :-1, :-2])
    assert not s[:, :, 0].any() and not s[:, :, :, :2].any()
    assert not affine.shift(x, 100, -50).any()
    half = affine.shift(x, 0.5, 0)
    np.testing.assert_allclose(half[..., 1:], (x[..., 1:] + x[..., :-1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(half[..., 0], x[..., 0] / 2, rtol=1e-6)


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_rotate_90_is_rot90(size, mode):
    x = batch(3, 2, size, size)
    np.testing.assert_allclose(affine.rotate(x, 90, mode), np.rot90(x, 1, axes=(2, 3)), atol=1e-6)
    np.testing.assert_allclose(affine.rotate(x, -90, mode), np.rot90(x, -1, axes=(2, 3)), atol=1e-6)
    np.testing.assert_allclose(affine.rotate(x, 180, mode), x[:, :, ::-1, ::-1], atol=1e-6)


def test_rotate_180_on_a_non_square_single_channel_batch():
    x = batch(2, 1, 5, 8, dtype=np.float64)[:, 0]                    # (N, H, W) accepted too
    out = affine.rotate(x, 180)
    assert out.shape == x.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, x[:, ::-1, ::-1], atol=1e-12)


def test_identity_transforms():
    x = batch()
    for out in (affine.rotate(x, 0), affine.scale(x, 1.0), affine.shift(x, 0, 0),
                affine.rotate(x, 0, "nearest"), affine.rotate(x, 360)):
        np.testing.assert_allclose(out, x, atol=1e-6)


def test_scale_about_the_centre():
    out = affine.scale(dot(r=4, c=5), 2.0)          # a dot one pixel right of the centre (4, 4)
    assert out[0, 0, 4, 6] == 1.0                   # lands two pixels right of it
    assert out[0, 0, 4, 5] == pytest.approx(0.5) and out[0, 0, 4, 7] == pytest.approx(0.5)
    small = affine.scale(np.ones((1, 1, 9, 9), np.float32), 0.5)
    assert small[0, 0, 4, 4] == 1.0 and small[0, 0, 0, 0] == 0.0   # shrinks, zero fill at the border


def test_per_image_parameters():
    x = batch(3, 1, 7, 7)
    out = affine.rotate(x, np.array([0.0, 90.0, -90.0]))
    np.testing.assert_allclose(out[0], x[0], atol=1e-6)
    np.testing.assert_allclose(out[1], np.rot90(x[1], 1, axes=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(out[2], np.rot90(x[2], -1, axes=(1, 2)), atol=1e-6)
    with pytest.raises(ValueError, match="one value per image"):
        affine.rotate(x, [1.0, 2.0])


def test_affine_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    n, c, h, w = 5, 2, 7, 10
    x = rng.random((n, c, h, w)).astype(np.float32)
    theta = np.concatenate([rng.normal(0, 0.5, (n, 2, 2)) + np.eye(2), rng.normal(0, 2, (n, 2, 1))], axis=2)
    # torch's align_corners=True coordinates are ours scaled to [-1, 1]: u = u_norm (W-1)/2.
    sx, sy = (w - 1) / 2, (h - 1) / 2
    tn = theta.copy()
    tn[:, 0, 1] *= sy / sx
    tn[:, 1, 0] *= sx / sy
    tn[:, 0, 2] /= sx
    tn[:, 1, 2] /= sy
    for mode in ("bilinear", "nearest"):
        grid = torch.nn.functional.affine_grid(torch.tensor(tn), (n, c, h, w), align_corners=True)
        ref = torch.nn.functional.grid_sample(torch.tensor(x, dtype=torch.float64), grid, mode=mode,
                                              padding_mode="zeros", align_corners=True).numpy()
        got = affine.affine_sample(x, theta, mode)
        if mode == "nearest":       # rounding of exact .5 ties may differ; compare where no tie is near
            assert np.mean(np.abs(got - ref) < 1e-5) > 0.99
        else:
            np.testing.assert_allclose(got, ref, atol=2e-5)


def test_add_noise():
    x = np.full((3, 1, 40, 40), 0.5, np.float32)
    out = affine.add_noise(x, np.array([0.0, 0.05, 0.1]), np.random.default_rng(0))
    assert out.dtype == np.float32 and (x == 0.5).all()
    np.testing.assert_array_equal(out[0], x[0])
    assert abs(np.std(out[1] - 0.5) - 0.05) < 0.005 and abs(np.std(out[2] - 0.5) - 0.1) < 0.01
    big = affine.add_noise(x, 5.0, np.random.default_rng(0))
    assert big.min() == 0.0 and big.max() == 1.0
    assert affine.add_noise(x, 5.0, np.random.default_rng(0), clip=None).max() > 1.0


def test_resampler_rejects_integer_images_and_bad_modes():
    with pytest.raises(TypeError, match="float"):
        affine.rotate(np.zeros((1, 1, 4, 4), np.uint8), 10)
    with pytest.raises(ValueError, match="mode"):
        affine.rotate(np.zeros((1, 1, 4, 4), np.float32), 10, mode="bicubic")


# --- augmentations: shared guarantees -----------------------------------------------------------------
def test_registry_lists_every_augmentation_with_declared_options():
    assert set(AUGMENTATIONS) == {"random_shift", "random_rotate", "random_scale", "random_crop",
                                  "horizontal_flip", "gaussian_noise", "cutout"}
    for name, cls in AUGMENTATIONS.items():
        assert issubclass(cls, Augmentation) and cls.type_name == name and cls.__doc__
        assert cls.options and all(isinstance(o, Option) and o.doc and not o.required for o in cls.options.values())


@pytest.mark.parametrize("spec", ALL_SPECS + [ALL_SPECS], ids=lambda s: s["type"] if isinstance(s, dict) else "all")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_array_same_dtype_input_untouched_and_seeded(spec, dtype):
    aug = build_augment(spec if isinstance(spec, list) else [spec])
    x = batch(8, dtype=dtype)
    before = x.copy()
    out = aug(x, np.random.default_rng(5))
    assert out.shape == x.shape and out.dtype == dtype and not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, before)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, aug(x, np.random.default_rng(5)))
    assert not np.array_equal(out, aug(x, np.random.default_rng(6)))
    for n in (0, 1):                                 # an empty batch and a batch of one
        assert aug(x[:n], np.random.default_rng(0)).shape == (n,) + x.shape[1:]


def test_build_augment_empty_is_none_and_augment_refuses_non_batches():
    assert build_augment([]) is None and build_augment(None) is None
    aug = build_augment([{"type": "horizontal_flip"}])
    with pytest.raises(ValueError, match="float batch"):
        aug(np.zeros((2, 3, 4, 4), np.uint8), np.random.default_rng(0))
    assert isinstance(Augment([]), Augment)
    x = batch()
    out = Augment([])(x, np.random.default_rng(0))
    assert np.array_equal(out, x) and out is not x


# --- augmentations: semantics ---------------------------------------------------------------------------
def matches_some(out: np.ndarray, x: np.ndarray, candidates) -> bool:
    """Every image of `out` equals candidate(x)[i] for at least one candidate."""
    ok = np.zeros(len(x), bool)
    for cand in candidates:
        ok |= (cand(x) == out).all(axis=(1, 2, 3))
    return bool(ok.all())


def test_random_shift_is_a_whole_pixel_shift_within_range():
    x = batch(40)
    out = build_augment([{"type": "random_shift", "max_pixels": 2}])(x, np.random.default_rng(0))
    shifts = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)]
    assert matches_some(out, x, [lambda v, d=d: affine.shift(v, d[0], d[1], "nearest") for d in shifts])
    assert not matches_some(out, x, [lambda v: v])                 # some image actually moved
    zero = build_augment([{"type": "random_shift", "max_pixels": 0}])(x, np.random.default_rng(0))
    np.testing.assert_array_equal(zero, x)


def test_random_crop_equals_a_window_of_the_zero_padded_image():
    x = batch(30, h=8, w=10)
    out = build_augment([{"type": "random_crop", "padding": 2}])(x, np.random.default_rng(1))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    windows = [lambda v, i=i, j=j: padded[:, :, i:i + 8, j:j + 10] for i in range(5) for j in range(5)]
    assert matches_some(out, x, windows)
    np.testing.assert_array_equal(build_augment([{"type": "random_crop", "padding": 0}])(x, np.random.default_rng(1)), x)


def test_random_rotate_and_scale_draw_uniform_parameters_per_image():
    x = batch(10)
    rot = build_augment([{"type": "random_rotate", "degrees": 20}])(x, np.random.default_rng(2))
    angles = np.random.default_rng(2).uniform(-20, 20, 10)
    np.testing.assert_allclose(rot, affine.rotate(x, angles), atol=1e-6)
    sc = build_augment([{"type": "random_scale", "min": 0.7, "max": 1.3}])(x, np.random.default_rng(3))
    np.testing.assert_allclose(sc, affine.scale(x, np.random.default_rng(3).uniform(0.7, 1.3, 10)), atol=1e-6)
    np.testing.assert_allclose(build_augment([{"type": "random_rotate", "degrees": 0}])(x, np.random.default_rng(0)),
                               x, atol=1e-6)


def test_horizontal_flip_twice_is_identity():
    x = batch()
    flip = build_augment([{"type": "horizontal_flip", "p": 1.0}])
    np.testing.assert_array_equal(flip(x, np.random.default_rng(0)), x[..., ::-1])
    np.testing.assert_array_equal(flip(flip(x, np.random.default_rng(0)), np.random.default_rng(1)), x)
    twice = build_augment([{"type": "horizontal_flip", "p": 1.0}, {"type": "horizontal_flip", "p": 1.0}])
    np.testing.assert_array_equal(twice(x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(build_augment([{"type": "horizontal_flip", "p": 0.0}])(x, np.random.default_rng(0)), x)
    half = build_augment([{"type": "horizontal_flip", "p": 0.5}])(batch(200, 1, 4, 4), np.random.default_rng(0))
    flipped = (half == batch(200, 1, 4, 4)[..., ::-1]).all(axis=(1, 2, 3)).mean()
    assert 0.35 < flipped < 0.65


def test_gaussian_noise_std_and_clipping():
    x = np.full((4, 3, 32, 32), 0.5, np.float32)
    out = build_augment([{"type": "gaussian_noise", "std": 0.05}])(x, np.random.default_rng(0))
    assert abs(float(np.std(out - x)) - 0.05) < 0.003
    loud = build_augment([{"type": "gaussian_noise", "std": 1.0}])(x, np.random.default_rng(0))
    assert loud.min() == 0.0 and loud.max() == 1.0
    np.testing.assert_array_equal(build_augment([{"type": "gaussian_noise", "std": 0.0}])(x, np.random.default_rng(0)), x)


def test_cutout_zeroes_one_clipped_square_in_every_channel():
    x = np.ones((50, 3, 16, 16), np.float32)
    out = build_augment([{"type": "cutout", "size": 6, "p": 1.0}])(x, np.random.default_rng(0))
    holes = out == 0
    assert (holes == holes[:, :1]).all()                            # the same hole in every channel
    for hole in holes[:, 0]:                                        # one axis-aligned rectangle, <= 6x6
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        assert 3 <= len(rows) <= 6 and 3 <= len(cols) <= 6
        assert hole.sum() == len(rows) * len(cols) and np.ptp(rows) == len(rows) - 1
    never = build_augment([{"type": "cutout", "size": 6, "p": 0.0}])(x, np.random.default_rng(0))
    np.testing.assert_array_equal(never, x)


# --- option validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, path, message", [
    ({"type": "random_shift", "max_pixels": -1}, "max_pixels", ">= 0"),
    ({"type": "random_shift", "max_pixels": 1.5}, "max_pixels", "an integer"),
    ({"type": "random_shift", "max_pixels": True}, "max_pixels", "an integer"),
    ({"type": "random_rotate", "degrees": 200}, "degrees", r"\[0.0, 180.0\]"),
    ({"type": "random_rotate", "degrees": "ten"}, "degrees", "a number"),
    ({"type": "random_scale", "min": 0.0}, "min", r"\[0.1, 10.0\]"),
    ({"type": "random_scale", "min": 1.2, "max": 0.8}, "max", r"max \(0.8\) must be >= min \(1.2\)"),
    ({"type": "random_crop", "padding": -2}, "padding", ">= 0"),
    ({"type": "horizontal_flip", "p": 1.5}, "p", r"\[0.0, 1.0\]"),
    ({"type": "gaussian_noise", "std": -0.1}, "std", r"\[0.0, 1.0\]"),
    ({"type": "gaussian_noise", "std": float("nan")}, "std", "a number"),
    ({"type": "cutout", "size": 0}, "size", ">= 1"),
    ({"type": "cutout", "p": -1}, "p", r"\[0.0, 1.0\]"),
    ({"type": "cutout", "sise": 4}, "sise", "unknown key 'sise'.*did you mean 'size'"),
    ({"type": "random_rotat", "degrees": 3}, "type", "unknown augmentation type 'random_rotat'.*'random_rotate'"),
    ({"type": 7}, "type", "unknown augmentation type 7"),
    ({"degrees": 3}, "", "missing 'type'"),
])
def test_bad_options_are_config_errors_with_key_paths(spec, path, message):
    specs = [{"type": "horizontal_flip"}, spec]
    want = "data.augment[1]" + (f".{path}" if path else "")
    with pytest.raises(ConfigError, match=message) as e:
        build_augment(specs)
    assert e.value.path == want
    assert str(e.value).startswith(want + ":")


@pytest.mark.parametrize("specs, path", [("random_shift", "data.augment"), ({"type": "cutout"}, "data.augment"),
                                         ([["cutout"]], "data.augment[0]")])
def test_augment_must_be_a_list_of_mappings(specs, path):
    with pytest.raises(ConfigError) as e:
        build_augment(specs)
    assert e.value.path == path


def test_resolve_fills_defaults():
    assert [AUGMENTATIONS.resolve(s, "data.augment[0]") for s in ({"type": "random_scale"}, {"type": "cutout", "size": 4})] == [
        {"type": "random_scale", "min": 0.9, "max": 1.1}, {"type": "cutout", "size": 4, "p": 1.0}]


def test_config_loader_validates_augment_entries():
    from nntrain.config import parse_config_text

    base = """
name: t
seed: 0
data: {{dataset: mnist-mini, val_size: 100, augment: {augment}}}
model: [{{type: flatten}}, {{type: linear, out_features: 10}}]
loss: {{type: softmax_cross_entropy}}
optimizer: {{type: sgd, lr: 0.1}}
train: {{epochs: 1, batch_size: 32}}
"""
    cfg = parse_config_text(base.format(augment="[{type: random_shift, max_pixels: 2}, {type: random_rotate}]"))
    assert cfg["data"]["augment"] == [{"type": "random_shift", "max_pixels": 2}, {"type": "random_rotate", "degrees": 10.0}]
    assert build_augment(cfg["data"]["augment"]) is not None
    with pytest.raises(ConfigError) as e:
        parse_config_text(base.format(augment="[{type: random_rotate}, {type: random_scale, min: 2, max: 1}]"))
    assert e.value.path == "data.augment[1].max"
