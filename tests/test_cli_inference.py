"""The inference commands end to end on scikit-learn's digits: class-conditional and sharpened
sampling, in-painting and variants, and their error lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepmix.cli.main import main

SPEC = "F(4,4,2,2)-G(16)-F(3,3,1,1)-G(16)-C(10,2)"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--arch", SPEC, "--data", "digits", "--epochs", "8", "--batch-size",
                 "20", "--out", str(out), "--no-progress"]) == 0
    return out


def test_class_conditional_and_sharpened_sampling(run_dir, tmp_path, capsys):
    png = tmp_path / "c.png"
    code, _, err = run(capsys, "sample", str(run_dir), "--class", "0-2", "--n", "4", "--out",
                       str(png), "--sharpen", "--sharpen-iterations", "3")
    assert code == 0, err
    z = np.load(png.with_suffix(".npz"))
    assert z["samples"].shape == (12, 8, 8, 1)
    assert z["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    code, _, err = run(capsys, "sample", str(run_dir), "--class", "10", "--out", str(png))
    assert code == 2 and "0..9" in err and "Traceback" not in err
    # One S per GMM layer, lowest first; a wrong count is named.
    code, _, err = run(capsys, "sample", str(run_dir), "--n", "3", "--top-s", "3,1", "--out",
                       str(png))
    assert code == 0, err
    code, _, err = run(capsys, "sample", str(run_dir), "--top-s", "2,2,2", "--out", str(png))
    assert code == 2 and "2 GMM layers" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        run(capsys, "sample", str(run_dir), "--top-s", "2,0", "--out", str(png))
    assert "positive integer" in capsys.readouterr().err


def test_inpaint_command_reports_errors_and_keeps_pixels(run_dir, tmp_path, capsys):
    png, js = tmp_path / "i.png", tmp_path / "i.json"
    code, out, err = run(capsys, "inpaint", str(run_dir), "--n", "6", "--out", str(png),
                         "--json", str(js))
    assert code == 0, err
    result = json.loads(js.read_text())
    assert result["n"] == 6 and 0 < result["mse_missing"] < 1
    assert png.stat().st_size > 0 and "MSE on missing pixels" in out
    mask = np.ones((8, 8), bool)
    mask[2:5, 2:5] = False
    np.save(tmp_path / "m.npy", mask)
    assert run(capsys, "inpaint", str(run_dir), "--mask", str(tmp_path / "m.npy"), "--out",
               str(png))[0] == 0
    code, _, err = run(capsys, "inpaint", str(run_dir), "--mask", str(tmp_path / "no.npy"),
                       "--out", str(png))
    assert code == 2 and "does not exist" in err
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    code, _, err = run(capsys, "inpaint", str(run_dir), "--mask", str(tmp_path / "bad.npy"),
                       "--out", str(png))
    assert code == 2 and "not a readable .npy" in err
    np.save(tmp_path / "wrong.npy", np.ones((5, 5), bool))
    code, _, err = run(capsys, "inpaint", str(run_dir), "--mask", str(tmp_path / "wrong.npy"),
                       "--out", str(png))
    assert code == 2 and "does not fit" in err
    code, _, err = run(capsys, "inpaint", str(run_dir), "--mask", "diagonal", "--out", str(png))
    assert code == 2 and "unknown mask" in err


def test_variants_command(run_dir, tmp_path, capsys):
    png = tmp_path / "v.png"
    code, out, err = run(capsys, "variants", str(run_dir), "--n-templates", "3",
                         "--per-template", "4", "--keep-above", "0", "--out", str(png))
    assert code == 0, err and png.stat().st_size > 0
    code, _, err = run(capsys, "variants", str(run_dir), "--layer", "5", "--out", str(png))
    assert code == 2 and "does not exist" in err


def test_report_command_writes_a_self_contained_page(run_dir, tmp_path, capsys):
    page = tmp_path / "r.html"
    code, out, err = run(capsys, "report", str(run_dir), "--out", str(page), "--n-samples", "9",
                         "--n-test", "100", "--sharpen-iterations", "2")
    assert code == 0, err
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 6 and "<img" in text
    assert "src=\"report" not in text           # no links to other files: self-contained
    figures = json.loads(page.with_suffix(".json").read_text())
    assert figures["n_test"] == 100 and figures["outliers"]["against"] == "images of uniform noise"
    # Digits against uniform noise: the top layer separates them well.
    assert figures["outliers"]["auroc"]["1"] > 0.9
    assert {"dunn", "davies_bouldin", "purity"} <= set(figures["clustering"])
    code, _, err = run(capsys, "report", str(tmp_path / "nothing"))
    assert code == 2 and "deepmix: error:" in err
    # A run of another family: one line, and nothing written into its folder.
    gmm = tmp_path / "gmm"
    code, _, err = run(capsys, "train", "--model", "gmm", "--data", "digits", "--k", "3",
                       "--epochs", "1", "--out", str(gmm), "--no-progress")
    assert code == 0, err
    before = sorted(p.name for p in gmm.iterdir())
    code, _, err = run(capsys, "report", str(gmm))
    assert code == 2 and "holds a 'gmm' run; this needs a 'dcgmm' run" in err
    assert sorted(p.name for p in gmm.iterdir()) == before


def test_inpaint_unknown_mask_reports_iou(run_dir, tmp_path, capsys):
    png, js = tmp_path / "u.png", tmp_path / "u.json"
    code, out, err = run(capsys, "inpaint", str(run_dir), "--unknown", "--mask", "center",
                         "--corruption", "checkerboard", "--n", "20", "--out", str(png),
                         "--json", str(js))
    assert code == 0, err
    result = json.loads(js.read_text())
    assert 0 <= result["iou"] <= 1 and "IoU" in out
    assert result["mse_missing"] < result["mse_missing_corrupted_input"]


def test_sample_quality_of_one_run_through_main(run_dir, tmp_path, monkeypatch, capsys):
    # --run has dest "run": it must not replace the command's own entry point.
    monkeypatch.setenv("DEEPMIX_DATA", str(tmp_path / "cache"))  # the reference CNN's cache
    js = tmp_path / "q.json"
    code, out, err = run(capsys, "sample-quality", "digits", "--run", str(run_dir), "--n", "5",
                         "--epochs", "1", "--json", str(js))
    assert code == 0, err
    assert "Traceback" not in err and "sample quality" in out
    q = json.loads(js.read_text())
    assert q["runs"]["runs"] == [str(run_dir)] and set(q["runs"]["per_class"]) == {
        str(c) for c in range(10)}


def test_json_dash_goes_to_stdout(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "evaluate", str(run_dir), "--split", "test", "--json", "-")
    assert code == 0, err
    summary = json.loads(out)  # stdout holds the JSON alone; the report lines are on stderr
    assert summary["n"] == 360 and "| GMM layer |" in err
    code, out, err = run(capsys, "cluster", str(run_dir), "--json", "-")
    assert code == 0, err
    assert "purity" in json.loads(out) and "Dunn index" in err
    assert not (tmp_path / "-").exists()


def test_outlier_classes_seen_in_training_are_refused(run_dir, tmp_path, capsys):
    # run_dir was trained on every digit: class 0 is no outlier (the AUROC would be ~50 %).
    code, out, err = run(capsys, "outliers", str(run_dir), "--outliers", "0", "--out",
                         str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("deepmix: error: --outliers 0:") and err.count("\n") == 1
    assert "training classes (all)" in err and not (tmp_path / "o").exists()


def test_outliers_of_classes_left_out_of_training(tmp_path, capsys):
    out = tmp_path / "run19"
    assert main(["train", "--arch", "F(4,4,2,2)-G(9)", "--data", "digits", "--classes", "1-9",
                 "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    code, text, err = run(capsys, "outliers", str(out), "--outliers", "0", "--out",
                          str(tmp_path / "o"))
    assert code == 0, err
    result = json.loads((tmp_path / "o" / "outliers.json").read_text())
    assert "classes [1, 2" in result["inliers"] and "classes 0" in result["outliers"]
    code, _, err = run(capsys, "outliers", str(out), "--outliers", "0,5", "--out",
                       str(tmp_path / "o"))
    assert code == 2 and "class(es) 5 of digits" in err and "(1,2,3,4,5,6,7,8,9)" in err
    # Inlier classes that hold the outlier class are refused too.
    code, _, err = run(capsys, "outliers", str(out), "--classes", "0-9", "--outliers", "0",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "class(es) 0 of digits are also inliers" in err
