"""The README's Python example runs as written."""

from __future__ import annotations

import re
import warnings
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
    namespace = {"__name__": "readme"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(blocks[1], "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "digits" / "weights.safetensors").is_file()
    assert "torch.Size([16, 8, 8, 1])" in capsys.readouterr().out
    # The example trains longer than the annealing window, so sigma does anneal.
    assert not [w for w in caught if "never anneal" in str(w.message)]
    history = namespace["history"]
    assert history[-1]["step"] > 300 and history[-1]["sigma"][0] < history[0]["sigma"][0]
