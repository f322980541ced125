"""A user's own images (.npy, .npz, folders of PNG / JPEG) through load_images and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepmix.cli.main import main
from deepmix.data import load_images
from deepmix.errors import DataError, InputError

SPEC = "F(4,4)-G(4)"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def digits_uint8(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images[:n] * (255 / 16)).round().astype(np.uint8), bunch.target[:n]


def test_train_on_an_npy_file_from_the_cli(tmp_path, capsys):
    x, _ = digits_uint8()
    np.save(tmp_path / "mine.npy", x)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", str(tmp_path / "mine.npy"),
                       "--epochs", "1", "--batch-size", "10", "--out", str(out), "--no-progress")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["name"] == str(tmp_path / "mine.npy") and config["data"]["n"] == 48
    # The held-out fifth: evaluate (default split test) scores images the run never saw.
    code, text, err = run(capsys, "evaluate", str(out))
    assert code == 0, err
    assert "(12 images)" in text


def test_splits_of_a_single_array_hold_out_every_fifth_image(tmp_path):
    x = (np.arange(7 * 4 * 4) % 256).astype(np.uint8).reshape(7, 4, 4)
    np.save(tmp_path / "a.npy", x)
    train, test = load_images(tmp_path / "a.npy", "train"), load_images(tmp_path / "a.npy", "test")
    np.testing.assert_array_equal(test.images[..., 0], x[[0, 5]])
    np.testing.assert_array_equal(train.images[..., 0], x[[1, 2, 3, 4, 6]])
    assert train.shape == (4, 4, 1) and train.levels == 256 and train.labels is None


def test_float_and_integer_arrays_become_256_levels(tmp_path):
    x = np.random.default_rng(0).random((10, 3, 5, 2))
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    ds = load_images(str(tmp_path / "f.npy"), "train")
    assert ds.shape == (3, 5, 2) and ds.images.dtype == np.uint8
    np.testing.assert_allclose(ds.to_tensor().numpy(), x[_train_rows(10)], atol=0.5 / 255 + 1e-6)
    np.save(tmp_path / "i.npy", np.full((5, 2, 2), 200, dtype=np.int64))
    assert int(load_images(tmp_path / "i.npy", "train").images.max()) == 200


def _train_rows(n):
    return np.arange(n) % 5 != 0


def test_npz_with_labels_and_classes_from_the_cli(tmp_path, capsys):
    x, y = digits_uint8(100)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    ds = load_images(tmp_path / "d.npz", "test", classes=[3])
    assert set(ds.labels.tolist()) == {3} and len(ds) == int((y[::5] == 3).sum())
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", str(tmp_path / "d.npz"),
                       "--classes", "1-9", "--epochs", "1", "--batch-size", "20", "--out",
                       str(out), "--no-progress")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["data"]["classes"] == list(range(1, 10))
    # The cache layout gives its own splits.
    np.savez(tmp_path / "s.npz", x_train=x[:70], y_train=y[:70], x_test=x[70:], y_test=y[70:])
    assert len(load_images(tmp_path / "s.npz", "train")) == 70
    np.testing.assert_array_equal(load_images(tmp_path / "s.npz", "test").labels, y[70:])


def _write_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_png_folder_with_class_subfolders_from_the_cli(tmp_path, capsys):
    x, y = digits_uint8(40)
    folder = tmp_path / "pngs"
    for k, (img, label) in enumerate(zip(x, y)):
        _write_png(folder / str(label) / f"{k:03d}.png", img)
    (folder / "notes.txt").write_text("not an image")
    ds = load_images(folder, "train")
    assert ds.shape == (8, 8, 1) and len(ds) + len(load_images(folder, "test")) == 40
    # Files sorted by class folder, then name: every image keeps its own label.
    order = sorted(range(40), key=lambda k: (str(y[k]), f"{k:03d}"))
    np.testing.assert_array_equal(ds.labels, y[order][_train_rows(40)])
    np.testing.assert_array_equal(ds.images[..., 0], x[order][_train_rows(40)])
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", str(folder), "--epochs", "1",
                       "--batch-size", "8", "--out", str(out), "--no-progress")
    assert code == 0, err


def test_jpeg_colour_and_named_classes_and_train_test_parts(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "pics"
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            for k in range(n):
                _write_png(folder / split / cls / f"{k}.png",
                           rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(
        folder / "train" / "dog" / "grey.jpg")
    train = load_images(folder, "train")
    assert train.shape == (6, 5, 3) and len(train) == 9  # the grey JPEG is repeated to RGB
    assert train.labels.tolist() == [0] * 4 + [1] * 5
    assert load_images(folder, "test").labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("make, error, needle", [
    (lambda p: np.save(p / "d.npy", np.full((4, 3, 3), np.nan)), InputError, "NaN"),
    (lambda p: np.save(p / "d.npy", np.full((4, 3, 3), 2.5)), InputError, "[0, 1], got 2.5"),
    (lambda p: np.save(p / "d.npy", np.zeros((3, 3), np.uint8)), InputError, "(N, H, W)"),
    (lambda p: np.save(p / "d.npy", np.zeros((4, 1, 8, 8), np.uint8)), InputError,
     "channels-first"),
    (lambda p: np.save(p / "d.npy", np.zeros((0, 8, 8), np.uint8)), InputError, "no images"),
    (lambda p: np.save(p / "d.npy", np.full((4, 3, 3), 300, np.int32)), InputError, "0..255"),
    (lambda p: np.save(p / "d.npy", np.zeros((1, 3, 3), np.uint8)), InputError,
     "train split is empty"),
    (lambda p: np.savez(p / "d.npz", pixels=np.zeros((4, 3, 3))), DataError, "holds pixels"),
    (lambda p: np.savez(p / "d.npz", images=np.zeros((4, 3, 3)), labels=np.zeros(3, int)),
     InputError, "labels must be integers of shape (4,)"),
    (lambda p: (p / "d.npy").write_bytes(b"garbage"), DataError, "not a readable .npy"),
])
def test_bad_files_are_one_line_errors(tmp_path, capsys, make, error, needle):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(error, match=None) as info:
        load_images(path, "train")
    assert needle in str(info.value) and str(path) in str(info.value)
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", str(path), "--out",
                       str(tmp_path / "run"), "--no-progress")
    assert code == 2 and err.startswith("deepmix: error: ") and err.count("\n") == 1


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", str(empty), "--out",
                       str(tmp_path / "run"), "--no-progress")
    assert code == 2 and "holds neither IDX files" in err and "PNG / JPEG images" in err
    mixed = tmp_path / "mixed"
    _write_png(mixed / "a.png", np.zeros((8, 8), np.uint8))
    _write_png(mixed / "b.png", np.zeros((8, 6), np.uint8))
    with pytest.raises(DataError, match=r"differ in size: .*a.png is 8x8 but .*b.png is 6x8"):
        load_images(mixed)
    broken = tmp_path / "broken"
    _write_png(broken / "a.png", np.zeros((8, 8), np.uint8))
    (broken / "b.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"Cannot read image .*b.png"):
        load_images(broken)
    both = tmp_path / "both"
    _write_png(both / "a.png", np.zeros((8, 8), np.uint8))
    _write_png(both / "1" / "b.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="both images and class subfolders"):
        load_images(both)
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "nothing.npy")
