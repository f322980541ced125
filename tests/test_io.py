"""Atomic writes onto targets that are not regular files, and ``-`` as stdout."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from deepmix.utils.io import (atomic_path, is_stdout, json_stdout, write_json_atomic,
                              write_json_output, write_text_atomic)


def test_regular_file_is_still_replaced_atomically(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    inode = target.stat().st_ino
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert target.stat().st_ino != inode  # a new file renamed onto the name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_onto_a_fifo_keeps_the_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_json_atomic(fifo, {"through": "the pipe"})
    reader.join(10)
    assert json.loads(got[0]) == {"through": "the pipe"}
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # not replaced by a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_write_onto_dev_null_keeps_the_device():
    before = os.stat("/dev/null")
    write_text_atomic("/dev/null", "nothing\n")
    with atomic_path("/dev/null") as path:
        assert str(path) == "/dev/null"  # written in place, no temporary file in /dev
        path.write_bytes(b"x")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


def test_dash_is_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_stdout("-") and not is_stdout("a.json") and not is_stdout(None)
    assert write_json_output("-", {"n": 3}) is False
    assert json.loads(capsys.readouterr().out) == {"n": 3}
    assert not (tmp_path / "-").exists()
    assert write_json_output(tmp_path / "b.json", {"n": 4}) is True
    assert json.loads((tmp_path / "b.json").read_text()) == {"n": 4}


def test_json_stdout_sends_dash_to_the_given_stream(capsys):
    import io

    buf = io.StringIO()
    with json_stdout(buf):
        write_json_output("-", [1, 2])
    assert json.loads(buf.getvalue()) == [1, 2] and capsys.readouterr().out == ""
