"""Progress reports: a tqdm bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io

from deepmix.cli.main import main
from deepmix.utils import progress as progress_mod
from deepmix.utils.progress import progress_bar


def test_log_lines_without_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)  # a line at every update
    bar = progress_bar(4, desc="train", unit="step")
    for _ in range(4):
        bar.update(1)
        bar.set_postfix_str("G0=1.00")
    bar.close()
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and lines[0] == "train: step 0/4 (0%)"
    assert lines[-1].startswith("train: step 4/4 (100%), ") and lines[-1].endswith(", G0=1.00")
    assert len(lines) == 5  # the start and one per update; close adds no duplicate


def test_log_lines_are_periodic_and_the_last_one_comes_at_close(capsys):
    bar = progress_bar(1000, initial=10, desc="train", unit="step")
    for _ in range(990):
        bar.update(1)  # well within LOG_INTERVAL_S: no line
    assert capsys.readouterr().err == "train: step 10/1000 (1%)\n"
    bar.close()
    assert "step 1000/1000 (100%)" in capsys.readouterr().err


def test_stopped_run_says_so(capsys):
    bar = progress_bar(10, desc="train", unit="step")
    bar.update(3)
    bar.close()
    assert "step 3/10 (30%)" in capsys.readouterr().err.splitlines()[-1]


def test_terminal_gets_tqdm_and_disabled_gets_nothing(monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    bar = progress_bar(5, desc="train", unit="step")
    from tqdm import tqdm

    assert isinstance(bar, tqdm)
    bar.update(5)
    bar.close()
    assert "5/5" in tty.getvalue()
    before = tty.getvalue()
    off = progress_bar(5, desc="train", unit="step", enabled=False)
    off.update(5)
    off.set_postfix_str("x")
    off.close()
    assert tty.getvalue() == before and capsys.readouterr().err == ""


def test_training_in_a_batch_job_reports_progress(tmp_path, capsys):
    # capsys: stderr is not a terminal, as in a batch job's log.
    code = main(["train", "--arch", "F(4,4,2,2)-G(9)", "--data", "digits", "--epochs", "1",
                 "--batch-size", "100", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("train: step")]
    assert lines and lines[-1].startswith("train: step 15/15 (100%)") and "\r" not in err
