"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    # The first block is the tour of the families, the second the DCGMM example.
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    for run in ("gmm-em", "spn"):
        assert (tmp_path / "runs" / run / "weights.safetensors").is_file()
    exec(compile(blocks[1], "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "digits" / "weights.safetensors").is_file()
    assert "torch.Size([16, 8, 8, 1])" in capsys.readouterr().out
