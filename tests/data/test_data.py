"""nntrain.data: IDX reading (and every way an IDX file can be broken), dataset table and roots,
mnist-mini, validation split, channel statistics and batching."""

from __future__ import annotations

import gzip
import os
import weakref
from pathlib import Path

import numpy as np
import pytest

from nntrain.data import (Dataset, DatasetInfo, channel_stats, dataset_info, iterate_batches, load_dataset,
                          num_batches, resolve_root, split_validation)
from nntrain.data.idx import read_idx, read_images, read_labels, write_idx
from nntrain.data.mnist import IDX_FILES, MINI_PATH, build_mnist_mini, load_mnist_mini, select_balanced
from nntrain.errors import ConfigError, DataError

DATA = os.environ.get("NNTRAIN_DATA")
needs_data = pytest.mark.skipif(not DATA or not (Path(DATA) / "mnist").is_dir(),
                                reason="real MNIST not available (set NNTRAIN_DATA)")


def header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def write(path: Path, payload: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def small_set(rng: np.random.Generator, n: int = 12, h: int = 28, w: int = 28, classes: int = 10):
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8), rng.integers(0, classes, size=n).astype(np.uint8)


def write_dataset(folder: Path, rng: np.random.Generator, n_train: int = 30, n_test: int = 10, gz: bool = True):
    """The four MNIST-named IDX files with random content; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = [*small_set(rng, n_train), *small_set(rng, n_test)]
    for stem, arr in zip(IDX_FILES, arrays):
        write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


# ---------------------------------------------------------------- IDX reading

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_all_dtypes(tmp_path, gz):
    rng = np.random.default_rng(0)
    for dt in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dt)
        p = write_idx(tmp_path / f"a-{np.dtype(dt).name}{'.gz' if gz else ''}", arr)
        back = read_idx(p)
        assert back.dtype == np.dtype(dt) and back.dtype.isnative
        np.testing.assert_array_equal(back, arr)


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    imgs, _ = small_set(np.random.default_rng(1), n=3)
    p = tmp_path / "train-images-idx3-ubyte"  # no .gz suffix, but gzip content
    write(p, header(0x08, imgs.shape) + imgs.tobytes(), gz=True)
    np.testing.assert_array_equal(read_images(p, (28, 28)), imgs)


def test_read_labels_int64_and_images_shape(tmp_path):
    imgs, labels = small_set(np.random.default_rng(2), n=5)
    pi = write_idx(tmp_path / "i.gz", imgs)
    pl = write_idx(tmp_path / "l", labels)
    assert read_images(pi, (28, 28)).shape == (5, 28, 28)
    y = read_labels(pl, 10)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)


_IMG = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
_GOOD_IMAGES = header(0x08, (2, 28, 28)) + _IMG.tobytes()

# (case, payload, reader, words the message must contain)
CORRUPT = [
    ("empty", b"", "images", "empty"),
    ("short-magic", b"\x00\x00", "images", "truncated"),
    ("bad-magic", b"\x12\x34\x08\x03" + _GOOD_IMAGES[4:], "images", "magic number 0x12340803"),
    ("bad-dtype-code", b"\x00\x00\x07\x03" + _GOOD_IMAGES[4:], "images", "type code 0x07"),
    ("zero-dims", b"\x00\x00\x08\x00", "images", "0 dimensions"),
    ("truncated-dims", _GOOD_IMAGES[:9], "images", "truncated header"),
    ("truncated-data", _GOOD_IMAGES[:-100], "images", "truncated"),
    ("trailing-bytes", _GOOD_IMAGES + b"\x00" * 7, "images", "7 unexpected trailing bytes"),
    ("huge-declared", header(0x08, (2**31, 2**31, 2)) + b"\x00" * 10, "images", "more than"),
    ("wrong-ndim-images", header(0x08, (2, 784)) + _IMG.tobytes(), "images", "3 dimensions"),
    ("wrong-size-images", header(0x08, (2, 32, 24)) + b"\x00" * (2 * 32 * 24), "images", "expected 28 x 28"),
    ("wrong-dtype-labels", header(0x0C, (3,)) + b"\x00" * 12, "labels", "expected an IDX label file"),
    ("label-out-of-range", header(0x08, (4,)) + bytes([1, 2, 10, 3]), "labels", "label 10 at index 2"),
]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case,payload,reader,words", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_idx_is_data_error_naming_file(tmp_path, case, payload, reader, words, gz):
    p = write(tmp_path / f"{case}-idx-ubyte{'.gz' if gz else ''}", payload, gz)
    with pytest.raises(DataError) as err:
        read_images(p, (28, 28)) if reader == "images" else read_labels(p, 10)
    msg = str(err.value)
    assert str(p) in msg
    assert words in msg


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(_GOOD_IMAGES)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="gzip") as err:
        read_images(p)
    assert str(p) in str(err.value)


def test_corrupt_gzip_crc(tmp_path):
    blob = bytearray(gzip.compress(_GOOD_IMAGES))
    blob[-6] ^= 0xFF  # inside the CRC32 trailer
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        read_images(p)
    assert str(p) in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(DataError, match="folder"):
        read_idx(tmp_path)


# ---------------------------------------------------------------- dataset table, roots, loading

def test_dataset_info_table():
    for name, shape in [("mnist", (1, 28, 28)), ("fashion-mnist", (1, 28, 28)), ("mnist-mini", (1, 28, 28)),
                        ("cifar10", (3, 32, 32))]:
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo)
        assert info.input_shape == shape and info.num_classes == 10 and len(info.class_names) == 10
    assert dataset_info("cifar10").class_names[0] == "airplane"
    assert dataset_info("cifar10").class_names[-1] == "truck"
    assert dataset_info("fashion-mnist").class_names[-1] == "Ankle boot"


def test_unknown_dataset_is_config_error():
    with pytest.raises(ConfigError) as err:
        dataset_info("mnsit")
    msg = str(err.value)
    assert "data.dataset" in msg and "'mnist'" in msg and "fashion-mnist" in msg and "cifar10" in msg


def test_resolve_root(monkeypatch, tmp_path):
    monkeypatch.setenv("NNTRAIN_DATA", str(tmp_path / "env"))
    assert resolve_root(str(tmp_path / "given")) == tmp_path / "given"
    assert resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("NNTRAIN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root(None) == tmp_path / "home" / ".cache" / "nntrain"


@pytest.mark.parametrize("gz", [True, False])
def test_load_dataset_from_written_idx(tmp_path, gz):
    arrays = write_dataset(tmp_path / "mnist", np.random.default_rng(3), gz=gz)
    before = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    ds = load_dataset("mnist", root=tmp_path, download=False, progress=False)
    assert isinstance(ds, Dataset) and ds.info.name == "mnist"
    assert ds.train_images.shape == (30, 1, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10, 1, 28, 28)
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train_images[:, 0], arrays[0])
    np.testing.assert_array_equal(ds.test_labels, arrays[3])
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == before  # nothing written


def test_count_mismatch_names_both_files(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_dataset(folder, np.random.default_rng(4))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg and "29" in msg


def test_missing_files_without_download_says_where(tmp_path):
    folder = tmp_path / "mnist"
    write_dataset(folder, np.random.default_rng(5))
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and str(folder) in msg
    assert "train-images" not in msg  # only the missing file is listed


def test_cifar10_entry_loads_lazily_from_its_folder(tmp_path):
    # The CIFAR reader lives in nntrain.data.cifar; the table sends it <root>/cifar10.
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path, download=False, progress=False)
    assert str(tmp_path / "cifar10") in str(err.value)


@needs_data
def test_real_mnist():
    ds = load_dataset("mnist", root=DATA, download=False, progress=False)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9
    assert np.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    mean, std = channel_stats(ds.train_images)
    np.testing.assert_allclose(mean, [0.1307], atol=1e-4)  # the well-known MNIST statistics
    np.testing.assert_allclose(std, [0.3081], atol=1e-4)


# ---------------------------------------------------------------- mnist-mini

def test_mnist_mini_ships_and_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("NNTRAIN_DATA", str(tmp_path / "nothing-here"))
    assert MINI_PATH.stat().st_size <= 2 * 2**20
    ds = load_dataset("mnist-mini", download=False)
    assert ds.train_images.shape == (5000, 1, 28, 28) and ds.test_images.shape == (1000, 1, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [500] * 10
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [100] * 10
    assert ds.train_images.max() == 255 and ds.train_images.mean() > 20  # real digits, not blanks
    assert not (tmp_path / "nothing-here").exists()


@needs_data
def test_mnist_mini_rebuilds_identically():
    built = build_mnist_mini(Path(DATA))
    shipped = load_mnist_mini()
    for key, arr in zip(("train_images", "train_labels", "test_images", "test_labels"), shipped):
        np.testing.assert_array_equal(built[key], arr)


def test_mnist_mini_file_validated(tmp_path):
    bad = tmp_path / "mini.npz"
    np.savez(bad, train_images=np.zeros((2, 1, 28, 28), np.uint8), train_labels=np.array([0, 11], np.uint8),
             test_images=np.zeros((1, 1, 28, 28), np.uint8), test_labels=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match="0..9"):
        load_mnist_mini(bad)
    np.savez(bad, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="expected arrays"):
        load_mnist_mini(bad)
    np.savez(bad, train_images=np.array([{}], dtype=object), train_labels=np.zeros(1, np.uint8),
             test_images=np.zeros((1, 1, 28, 28), np.uint8), test_labels=np.zeros(1, np.uint8))
    with pytest.raises(DataError, match=str(bad.name)):
        load_mnist_mini(bad)  # object arrays are refused (allow_pickle=False)
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="unreadable"):
        load_mnist_mini(bad)


def test_select_balanced_first_per_class():
    labels = np.array([3, 1, 3, 0, 1, 0, 3, 2, 2, 1])
    idx = select_balanced(labels, 2, num_classes=4)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    with pytest.raises(DataError, match="class 0"):
        select_balanced(labels, 3, num_classes=4)


# ---------------------------------------------------------------- validation split

def test_split_validation_deterministic_and_disjoint():
    rng_data = np.random.default_rng(6)
    images = rng_data.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)
    labels = np.arange(50, dtype=np.int64)  # labels identify the rows
    a = split_validation(images, labels, 10, np.random.default_rng(42))
    b = split_validation(images, labels, 10, np.random.default_rng(42))
    c = split_validation(images, labels, 10, np.random.default_rng(43))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert a[3].tolist() != c[3].tolist()
    tr_x, tr_y, va_x, va_y = a
    assert len(va_y) == 10 and len(tr_y) == 40
    assert sorted(tr_y.tolist() + va_y.tolist()) == list(range(50))
    np.testing.assert_array_equal(tr_x, images[tr_y])  # images travel with their labels
    np.testing.assert_array_equal(va_x, images[va_y])
    assert list(tr_y) == sorted(tr_y)  # original order kept


def test_split_validation_zero_and_bad_sizes():
    images = np.zeros((5, 1, 2, 2), np.uint8)
    labels = np.zeros(5, np.int64)
    tr_x, tr_y, va_x, va_y = split_validation(images, labels, 0, np.random.default_rng(0))
    assert len(tr_x) == 5 and va_x.shape == (0, 1, 2, 2) and va_y.shape == (0,)
    for bad in (5, 6, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="data.val_size"):
            split_validation(images, labels, bad, np.random.default_rng(0))


# ---------------------------------------------------------------- channel statistics

def test_channel_stats_matches_float64():
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (37, 3, 5, 6), dtype=np.uint8)
    images[:, 1] //= 4  # channels with different statistics
    mean, std = channel_stats(images, chunk_elements=200)  # many small chunks
    x = images.astype(np.float64) / 255
    assert mean.dtype == np.float32 and std.dtype == np.float32 and mean.shape == (3,)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-6)
    images_before = images.copy()
    channel_stats(images)
    np.testing.assert_array_equal(images, images_before)


def test_channel_stats_constant_channel_gets_std_one():
    images = np.full((4, 2, 3, 3), 7, np.uint8)
    images[:, 1, 0, 0] = 200
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean[0], 7 / 255, rtol=1e-6)
    assert std[0] == 1.0 and 0 < std[1] < 1


# ---------------------------------------------------------------- batching

def _data(n=10, c=2):
    rng = np.random.default_rng(8)
    return rng.integers(0, 256, (n, c, 3, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3


def test_batches_in_order_with_partial_last():
    images, labels = _data(10)
    batches = [(x.copy(), y) for x, y in iterate_batches(images, labels, 4)]
    assert [len(y) for _, y in batches] == [4, 4, 2] == [4, 4, 2][:num_batches(10, 4)]
    x_all = np.concatenate([x for x, _ in batches])
    assert x_all.dtype == np.float32
    np.testing.assert_array_equal(x_all, images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    assert all(y.dtype == np.int64 for _, y in batches)
    assert [len(y) for _, y in iterate_batches(images, labels, 4, drop_last=True)] == [4, 4]
    assert num_batches(10, 4, drop_last=True) == 2


def test_normalisation_matches_torch_formula():
    torch = pytest.importorskip("torch")
    images, labels = _data(7, c=3)
    mean = np.array([0.2, 0.5, 0.7], np.float32)
    std = np.array([0.3, 0.25, 0.1], np.float32)
    (x, _), = iterate_batches(images, labels, 7, mean=mean, std=std)
    t = (torch.from_numpy(images).float() / 255 - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]
    np.testing.assert_allclose(x, t.numpy(), rtol=1e-6, atol=1e-6)
    (x64, _), = iterate_batches(images, labels, 7, mean=mean, std=std, dtype=np.float64)
    assert x64.dtype == np.float64
    np.testing.assert_allclose(x64, (images / 255 - mean[:, None, None]) / std[:, None, None], rtol=1e-6)


def test_shuffle_deterministic_one_permutation_per_call():
    images, labels = _data(10)
    labels = np.arange(10, dtype=np.int64)
    order_a = np.concatenate([y for _, y in iterate_batches(images, labels, 3, rng=np.random.default_rng(1))])
    order_b = np.concatenate([y for _, y in iterate_batches(images, labels, 3, rng=np.random.default_rng(1))])
    np.testing.assert_array_equal(order_a, order_b)
    np.testing.assert_array_equal(order_a, np.random.default_rng(1).permutation(10))
    assert sorted(order_a.tolist()) == list(range(10)) and order_a.tolist() != list(range(10))
    # The permutation is drawn at the call, not at the first batch: the Generator advances exactly once.
    rng = np.random.default_rng(5)
    it = iterate_batches(images, labels, 3, rng=rng)
    ref = np.random.default_rng(5)
    ref.permutation(10)
    assert rng.bit_generator.state == ref.bit_generator.state
    x0, y0 = next(it)
    np.testing.assert_array_equal(x0, images[y0].astype(np.float32) / 255)  # images follow the order


def test_start_batch_resumes_same_order():
    images, labels = _data(10)
    labels = np.arange(10, dtype=np.int64)
    full = [y for _, y in iterate_batches(images, labels, 3, rng=np.random.default_rng(2))]
    rest = [y for _, y in iterate_batches(images, labels, 3, rng=np.random.default_rng(2), start_batch=2)]
    assert [r.tolist() for r in rest] == [f.tolist() for f in full[2:]]


def test_batch_of_one_and_dataset_smaller_than_batch():
    images, labels = _data(3)
    ones = list(iterate_batches(images, labels, 1))
    assert len(ones) == 3 and all(x.shape == (1, 2, 3, 3) for x, _ in ones)
    big = list(iterate_batches(images, labels, 100, rng=np.random.default_rng(0)))
    assert len(big) == 1 and big[0][0].shape == (3, 2, 3, 3)
    assert list(iterate_batches(images, labels, 100, drop_last=True)) == []
    empty = list(iterate_batches(images[:0], labels[:0], 4))
    assert empty == []


def test_held_batches_are_never_overwritten_and_buffers_are_reused():
    images, labels = _data(40)
    mean, std = np.array([0.5, 0.5], np.float32), np.array([0.25, 0.5], np.float32)
    expected = [(images[i:i + 4] / np.float32(255) - mean[:, None, None]) / std[:, None, None] for i in range(0, 40, 4)]
    # Holding every batch (like list()) must keep each intact.
    held = list(iterate_batches(images, labels, 4, mean=mean, std=std))
    for (x, _), e in zip(held, expected):
        np.testing.assert_allclose(x, e, rtol=1e-6)
    # A view kept by the caller (as a layer cache would) is not overwritten either.
    views = [x[1:] for x, _ in iterate_batches(images, labels, 4, mean=mean, std=std)]
    for v, e in zip(views, expected):
        np.testing.assert_allclose(v, e[1:], rtol=1e-6)
    # A plain loop that lets go of each batch converts into two recycled buffers: while the caller
    # still holds batch k-1 (its loop variable), batch k reuses the buffer of batch k-2.
    refs = []
    for k, (x, _) in enumerate(iterate_batches(images, labels, 4, rng=np.random.default_rng(0))):
        refs.append(weakref.ref(x.base))
        if k >= 2:
            assert x.base is refs[k - 2]()


def test_transform_gets_unit_range_and_is_normalised_after():
    images, labels = _data(6)
    seen = []

    def flip(x01):
        seen.append((x01.min(), x01.max(), x01.dtype))
        return x01[..., ::-1]  # a view of its input, shape kept

    mean, std = np.array([0.1, 0.2], np.float32), np.array([0.5, 0.5], np.float32)
    (x, _), = iterate_batches(images, labels, 6, mean=mean, std=std, transform=flip)
    assert all(lo >= 0 and hi <= 1 and dt == np.float32 for lo, hi, dt in seen)
    want = (images[..., ::-1] / np.float32(255) - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(x, want, rtol=1e-6)

    def crop(x01):
        return x01[:, :, 1:, 1:] * 2  # a fresh array of another shape

    (x, _), = iterate_batches(images, labels, 6, transform=crop)
    np.testing.assert_allclose(x, images[:, :, 1:, 1:] / np.float32(255) * 2, rtol=1e-6)


def test_batching_never_modifies_inputs_and_rejects_bad_arguments():
    images, labels = _data(5)
    before = images.copy(), labels.copy()
    for _ in iterate_batches(images, labels, 2, rng=np.random.default_rng(0), mean=[0.5, 0.5], std=[0.2, 0.2],
                             transform=lambda x: x.__imul__(0.5)):
        pass
    np.testing.assert_array_equal(images, before[0])
    np.testing.assert_array_equal(labels, before[1])
    for kwargs, words in [({"batch_size": 0}, "batch_size"), ({"batch_size": 2, "std": [0.0, 1.0]}, "positive"),
                          ({"batch_size": 2, "mean": [0.5]}, "shape"), ({"batch_size": 2, "dtype": np.int32}, "float")]:
        with pytest.raises(ValueError, match=words):
            iterate_batches(images, labels, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        iterate_batches(images, labels[:3], 2)
