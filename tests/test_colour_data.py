"""CIFAR-10 / CIFAR-100 and SVHN loaders, on tiny files in the real formats the tests write."""

from __future__ import annotations

import json
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from deepmix.data import USER_DATASETS, cifar_label_names, fetch, load_cifar, load_images, load_svhn
from deepmix.data.cifar import safe_unpickle
from deepmix.errors import DataError

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
         b"ship", b"truck"]


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _batch(data: np.ndarray, labels: list[int], label: bytes) -> dict:
    return {b"batch_label": label, b"labels": labels, b"data": data,
            b"filenames": [b"img_%d.png" % i for i in range(len(data))]}


def _write(path: Path, obj: object, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(folder: Path, per_batch: int = 4, protocol: int = 2) -> dict[str, np.ndarray]:
    """A CIFAR-10 folder of 5 train batches and a test batch; returns the rows and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for i in range(1, 6):
        data = _rows(per_batch, i)
        lab = [(i + j) % 10 for j in range(per_batch)]
        _write(folder / f"data_batch_{i}", _batch(data, lab, b"training batch %d of 5" % i),
               protocol)
        rows.append(data)
        labels += lab
    test = _rows(3, 99)
    _write(folder / "test_batch", _batch(test, [9, 0, 5], b"testing batch 1 of 1"), protocol)
    _write(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": NAMES,
                                     b"num_vis": 3072}, protocol)
    return {"train": np.concatenate(rows), "y_train": np.array(labels), "test": test,
            "y_test": np.array([9, 0, 5])}


def test_cifar10_folder_shapes_order_and_splits(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    rows = write_cifar10(folder)
    train, test = load_cifar(folder, "train"), load_cifar(folder, "test")
    assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (3, 32, 32, 3) and train.levels == 256
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.labels, rows["y_train"])  # batches 1..5 in order
    np.testing.assert_array_equal(test.labels, rows["y_test"])
    # Pixel (row 5, column 7) of image 2: red at 32*5+7, green at 1024+..., blue at 2048+...
    for channel in range(3):
        assert train.images[2, 5, 7, channel] == rows["train"][2, 1024 * channel + 32 * 5 + 7]
    np.testing.assert_array_equal(
        test.images.reshape(3, 1024, 3).transpose(0, 2, 1).reshape(3, 3072), rows["test"])
    assert cifar_label_names(folder)[1] == "automobile"
    # load_images detects the folder by its contents, like an IDX folder.
    via = load_images(str(folder), "test")
    np.testing.assert_array_equal(via.images, test.images)


def test_cifar10_default_protocol_pickles_and_one_known_pixel(tmp_path):
    folder = tmp_path / "c"
    write_cifar10(folder, per_batch=1, protocol=pickle.HIGHEST_PROTOCOL)
    data = np.zeros((1, 3072), np.uint8)
    data[0, 0], data[0, 1024 + 1], data[0, 2048 + 32] = 200, 100, 50  # R(0,0) G(0,1) B(1,0)
    _write(folder / "test_batch", _batch(data, [3], b"t"), pickle.HIGHEST_PROTOCOL)
    image = load_cifar(folder, "test").images[0]
    assert (image[0, 0, 0], image[0, 1, 1], image[1, 0, 2]) == (200, 100, 50)
    assert int(image.sum()) == 350


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as the CIFAR site's Python 2 cPickle wrote it: protocol 2, numpy 1's
    ``numpy.core.multiarray._reconstruct``, keys and pixel bytes as 8-bit strings (U / T)."""
    def short(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    raw = data.tobytes()
    out = b"\x80\x02}q\x00(" + short(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
    out += short(b"b") + b"\x87R(K\x01K" + bytes([len(data)]) + b"M" + struct.pack("<H", 3072)
    out += b"\x86cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R(K\x03" + short(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<I", len(raw))
    out += raw + b"tb" + short(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels)
    return out + b"eu."


def test_cifar10_python2_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    data = _rows(2, 7)
    (folder / "test_batch").write_bytes(_py2_batch(data, [6, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation on the way
        test = load_cifar(folder, "test")
    assert test.labels.tolist() == [6, 2]
    assert test.images[1, 31, 0, 1] == data[1, 1024 + 32 * 31]


def test_cifar10_archive_equals_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for split in ("train", "test"):
        a, b = load_images(str(archive), split), load_cifar(folder, split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert cifar_label_names(archive)[-1] == "truck"


def test_cifar10_by_name_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPMIX_DATA", str(tmp_path))
    with pytest.raises(DataError, match="cannot be downloaded.*cifar-10-batches-py"):
        load_images("cifar10")
    with pytest.raises(DataError, match="cannot be downloaded"):
        fetch("CIFAR-10")
    write_cifar10(tmp_path / "cifar-10-batches-py")
    data = load_images("CIFAR_10", "test", classes=[0, 9])
    assert data.name == "cifar10" and data.labels.tolist() == [9, 0]
    assert fetch("cifar10") == tmp_path / "cifar-10-batches-py"
    assert set(USER_DATASETS) == {"cifar10", "cifar100", "svhn"}


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 5), ("test", 2)):
        _write(folder / split, {b"filenames": [b"x"] * n, b"batch_label": b"b",
                                b"fine_labels": [99 - i for i in range(n)],
                                b"coarse_labels": [19 - i for i in range(n)], b"data": _rows(n, n)})
    _write(folder / "meta", {b"fine_label_names": [b"apple"] * 100,
                             b"coarse_label_names": [b"fish"] * 20})
    train = load_images(str(folder), "train")
    assert train.images.shape == (5, 32, 32, 3) and train.labels.tolist() == [99, 98, 97, 96, 95]
    assert load_cifar(folder, "test", labels="coarse").labels.tolist() == [19, 18]
    assert cifar_label_names(folder, "coarse") == ["fish"] * 20


class _Boom:
    """Pickles as a call of os.system (what a malicious "batch" would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    _write(folder / "test_batch", {b"data": _Boom(marker), b"labels": [0]})
    with pytest.raises(DataError, match=r"test_batch refers to (posix|nt|os)\.system.*refusing"):
        load_images(str(folder), "test")
    assert not marker.exists()
    # Other globals too: builtins.eval, or a numpy function outside the array rebuilders.
    for obj in (pickle.dumps(eval), pickle.dumps(np.save)):
        with pytest.raises(DataError, match="refusing"):
            safe_unpickle(obj, "x")
    # _codecs.encode is allowed only as bytes' Latin-1 spelling.
    import codecs

    evil = pickle.dumps(codecs.encode, protocol=2)[:-1] + b"(X\x01\x00\x00\x00xX\x04\x00\x00\x00zlibtR."
    with pytest.raises(DataError, match=r"_codecs.encode\(str, 'zlib'\).*refusing"):
        safe_unpickle(evil, "x")


def test_truncated_and_bad_cifar_files_give_one_clear_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"data_batch_3 is truncated or corrupt") as err:
        load_images(str(folder), "train")
    assert "\n" not in str(err.value)
    load_images(str(folder), "test")  # the other split is unharmed
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3 for the train split"):
        load_cifar(folder, "train")
    _write(folder / "test_batch", _batch(_rows(2, 0), [0, 10], b"t"))
    with pytest.raises(DataError, match=r"'labels' must lie in 0..9"):
        load_cifar(folder, "test")
    _write(folder / "test_batch", _batch(np.zeros((2, 1024), np.uint8), [0, 1], b"t"))
    with pytest.raises(DataError, match=r"uint8 of shape \(N, 3072\)"):
        load_cifar(folder, "test")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz is truncated or corrupt"):
        load_images(str(archive), "train")
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "missing.tar.gz"))


def _svhn(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_folder_file_labels_and_order(tmp_path):
    folder = tmp_path / "svhn"
    folder.mkdir()
    x, y = _svhn(folder / "train_32x32.mat", 12, 0)
    _svhn(folder / "test_32x32.mat", 10, 1)
    train = load_images(str(folder), "train")
    assert train.images.shape == (12, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.images[4, 3, 8, 2] == x[3, 8, 2, 4]  # X is (H, W, C, N)
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert len(load_svhn(folder, "test")) == 10
    # One .mat file: every 5th image is its test split.
    single = tmp_path / "train_32x32.mat"
    _svhn(single, 12, 0)
    test = load_images(str(single), "test")
    np.testing.assert_array_equal(test.images, train.images[[0, 5, 10]])
    assert len(load_images(str(single), "train")) == 9
    (folder / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="lacks test_32x32.mat"):
        load_images(str(folder), "test")


def test_svhn_by_name_and_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPMIX_DATA", str(tmp_path))
    with pytest.raises(DataError, match="svhn cannot be downloaded.*train_32x32.mat"):
        load_images("svhn")
    (tmp_path / "svhn").mkdir()
    _svhn(tmp_path / "svhn" / "test_32x32.mat", 4, 2)
    assert load_images("svhn", "test").name == "svhn"
    bad = tmp_path / "train_32x32.mat"
    _svhn(bad, 40, 3)
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"train_32x32.mat is truncated or corrupt") as err:
        load_images(str(bad))
    assert "\n" not in str(err.value)
    bad.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataError, match="train_32x32.mat"):
        load_images(str(bad))
    scipy.io.savemat(bad, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [11]])})
    with pytest.raises(DataError, match=r"labels must lie in 1..10"):
        load_svhn(bad)
    scipy.io.savemat(bad, {"images": np.zeros(3)})
    with pytest.raises(DataError, match="lacks X and y"):
        load_svhn(bad)


def _numbers(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _numbers(x)]
    return [float(obj)] if isinstance(obj, float) else []


@pytest.mark.parametrize("family", [
    ["--arch", "F(8,8,4,4)-G(4)-F(7,7,1,1)-G(3)", "--batch-size", "20"],
    ["--model", "gmm", "--k", "3"],
    ["--model", "deep-gmm", "--layers", "hc3,bd2", "--fold", "4", "--dequantize"],
], ids=["dcgmm", "gmm", "deep-gmm"])
def test_models_train_evaluate_and_sample_32x32_colour(tmp_path, family, capsys):
    """DCGMM, a flat GMM and a deep GMM take (32, 32, 3) CIFAR images through the CLI."""
    from deepmix.cli.main import main

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=8)
    out = tmp_path / "run"
    assert main(["train", *family, "--data", str(folder), "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["name"] == str(folder) and config["data"]["n"] == 40
    assert main(["evaluate", str(out), "--split", "test", "--json", str(tmp_path / "e.json")]) == 0
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 32, 32, 3)
    numbers = _numbers(json.loads((tmp_path / "e.json").read_text()))
    assert numbers and np.isfinite(numbers).all()  # every family's report, whatever its keys
    capsys.readouterr()
