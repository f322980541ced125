"""The command line end to end on scikit-learn's digits (no download), and its error lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deepmix
from deepmix.cli.main import main

SPEC = "F(4,4,2,2)-G(16)-F(3,3,1,1)-G(9)"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_evaluate_sample_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", "digits", "--epochs", "2",
                       "--batch-size", "50", "--out", str(out), "--no-progress")
    assert code == 0, err
    assert {"config.json", "weights.safetensors", "metrics.jsonl"} <= {p.name for p in out.iterdir()}

    js = tmp_path / "eval.json"
    per = tmp_path / "per.npz"
    code, text, err = run(capsys, "evaluate", str(out), "--split", "test", "--json", str(js),
                          "--per-sample", str(per))
    assert code == 0, err
    summary = json.loads(js.read_text())
    assert summary["n"] == 360 and len(summary["layers"]) == 2
    assert "bits_per_dim" in summary["layers"][0] and "bits_per_dim" not in summary["layers"][1]
    arrays = np.load(per)
    assert arrays["layer0_log_likelihood_per_position"].shape == (360, 3, 3)
    # The CLI's figure is the mean of the per-sample position means from the Python API.
    model = deepmix.load(out)
    test = deepmix.data.load_images("digits", "test").to_tensor()
    assert summary["layers"][0]["log_likelihood"] == pytest.approx(
        float(model.log_likelihood(test, layer=0).mean()), rel=1e-5)

    png = tmp_path / "s.png"
    code, _, err = run(capsys, "sample", str(out), "--n", "9", "--out", str(png), "--seed", "3")
    assert code == 0, err
    s1 = np.load(png.with_suffix(".npz"))["samples"]
    assert s1.shape == (9, 8, 8, 1) and png.stat().st_size > 0
    run(capsys, "sample", str(out), "--n", "9", "--out", str(tmp_path / "t.png"), "--seed", "3")
    assert np.array_equal(s1, np.load(tmp_path / "t.npz")["samples"])


def test_resume_continues_to_more_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "train", "--arch", SPEC, "--data", "digits", "--epochs", "1", "--out",
               str(out), "--no-progress")[0] == 0
    code, _, err = run(capsys, "train", "--out", str(out), "--resume", "--epochs", "2",
                       "--no-progress")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["loop"]["epochs"] == 2


@pytest.mark.parametrize("argv, needle", [
    (["train", "--arch", "X(3)", "--data", "digits"], "unknown layer type 'X'"),
    (["train", "--arch", "F(8,2)-G(25", "--data", "digits"], "malformed"),
    (["train", "--arch", "2L-zz", "--data", "digits"], "unknown architecture '2L-zz'"),
    (["train", "--arch", "2L-c", "--data", "digits"], "layer 3 (F(11,11,1,1))"),
    (["train", "--arch", SPEC, "--data", "nosuchdata"], "nosuchdata"),
    (["train", "--arch", SPEC, "--data", "digits", "--classes", "1-x"], "--classes"),
    (["train", "--arch", SPEC + "-C(10)", "--data", "digits", "--classifier-temperature", "0"],
     "temperature"),
])
def test_bad_input_gives_one_error_line(tmp_path, capsys, argv, needle):
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("deepmix: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_classifier_temperature_is_saved_with_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--arch", SPEC + "-C(10)", "--data", "digits",
                       "--epochs", "1", "--classifier-temperature", "8", "--out", str(out),
                       "--no-progress")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["classifier_temperature"] == 8.0
    code, _, err = run(capsys, "train", "--out", str(out), "--resume", "--epochs", "2",
                       "--classifier-temperature", "3", "--no-progress")
    assert code == 2 and "set when a run starts" in err and "Traceback" not in err


def test_missing_and_corrupt_run_folders(tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err
    out = tmp_path / "run"
    run(capsys, "train", "--arch", SPEC, "--data", "digits", "--epochs", "1", "--out", str(out),
        "--no-progress")
    weights = out / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(capsys, "sample", str(out), "--n", "2", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "corrupt" in err and not (tmp_path / "x.png").exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    run(capsys, "train", "--arch", SPEC, "--data", "digits", "--epochs", "1", "--out", str(out),
        "--no-progress")
    before = (out / "weights.safetensors").read_bytes()
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", "digits", "--epochs", "1",
                       "--out", str(out), "--no-progress")
    assert code == 2 and "already holds a run" in err
    assert (out / "weights.safetensors").read_bytes() == before


def test_demo_on_digits_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code, text, err = run(capsys, "demo", "--data", "digits", "--epochs", "2", "--out", str(out),
                          "--no-progress", "--n-samples", "16")
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "Test log-likelihood per GMM layer" in report and "samples.png" in report
    for name in ("samples.png", "samples.npz", "metrics.json", "test_images.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["layers"][0]["log_likelihood"])
    page = (out / "report.html").read_text()
    for needle in ("Class-conditional samples", "In-painting", "Outlier detection", "ROC curves",
                   "sharpening", "data:image/png;base64,"):
        assert needle in page, needle
    figures = json.loads((out / "report.json").read_text())
    assert 0 <= figures["classification_accuracy"] <= 1
    assert 0 < figures["inpainting_mse_right-half"] < 1
    assert set(figures["outliers"]["auroc"]) == {"0", "1"}
    # The outliers are the held-out class 0, which the model never saw (not uniform noise).
    assert figures["outliers"]["protocol"] == "held-out classes"
    assert figures["outliers"]["against"] == "digits test images of the held-out class 0"
    assert figures["outliers"]["n_outliers"] == 42 and figures["outliers"]["n_inliers"] == 318
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["data"]["classes"] == list(range(1, 10))
    assert "held-out class 0" in report and "Protocol: held-out classes" in page
    # The classifier fitted after training was saved with the trainer state kept (resume works).
    assert deepmix.load(out / "run").classifier is not None
    code, _, err = run(capsys, "train", "--out", str(out / "run"), "--resume", "--epochs", "3",
                       "--no-progress")
    assert code == 0, err


def test_demo_outlier_class_option(tmp_path, capsys):
    code, _, err = run(capsys, "demo", "--data", "digits", "--epochs", "1", "--out",
                       str(tmp_path / "d"), "--no-progress", "--outlier-class", "12")
    assert code == 2 and "--outlier-class 12 is not a class of the data" in err
    with pytest.raises(SystemExit):
        main(["demo", "--data", "digits", "--outlier-class", "x"])
    assert "expected a class id or 'none'" in capsys.readouterr().err


def test_unavailable_device_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(capsys, "train", "--arch", SPEC, "--data", "digits", "--epochs", "1",
                       "--out", str(tmp_path / "r"), "--device", "cuda", "--no-progress")
    assert code == 2 and "device 'cuda' is not available" in err


def test_threads_option_and_environment(monkeypatch, tmp_path, capsys):
    """``--threads`` / DEEPMIX_THREADS set torch's CPU threads before the command runs."""
    import torch

    from deepmix.cli.main import main

    before = torch.get_num_threads()
    try:
        missing = str(tmp_path / "none")
        assert main(["--threads", "2", "evaluate", missing]) == 2      # the command's own error
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("DEEPMIX_THREADS", "1")
        assert main(["evaluate", missing]) == 2
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("DEEPMIX_THREADS", "zero")
        with pytest.raises(SystemExit):
            main(["evaluate", missing])
        assert "DEEPMIX_THREADS" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["--threads", "0", "evaluate", missing])
    finally:
        torch.set_num_threads(before)
