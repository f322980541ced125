"""The plotting functions leave the user's matplotlib backend alone (no matplotlib.use, no
pyplot): a notebook keeps its inline backend after deepmix wrote a PNG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import matplotlib
    matplotlib.use("pdf")  # the user's choice, not Agg
    import numpy as np
    import torch
    from deepmix.plots import save_grid
    from deepmix.plots.density import density_figure, save_figure, subplots
    from deepmix.plots.roc import save_roc_curve

    class Blob:  # a 2-D density: a standard normal
        def log_prob(self, x):
            return -0.5 * (x ** 2).sum(-1) - np.log(2 * np.pi)
        def sample(self, n, generator=None):
            return torch.randn(n, 2, generator=generator)

    out = Path(sys.argv[1])
    written = [
        save_grid(np.random.rand(4, 5, 5, 1), out / "grid.png"),
        save_roc_curve({"layer 0": {"fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1], "auroc": 0.7}},
                       out / "roc.png"),
        density_figure(out / "density.png", [("blob", Blob())], torch.randn(50, 2),
                       n_samples=50, resolution=10),
    ]
    fig, axes = subplots(1, 2)
    axes[0, 0].plot([0, 1], [0, 1])
    written.append(save_figure(fig, out / "fig.png"))
    print(json.dumps({"backend": matplotlib.get_backend(),
                      "pyplot": "matplotlib.pyplot" in sys.modules,
                      "png": [Path(p).read_bytes()[:4] == b"\\x89PNG" for p in written]}))
""")


def test_plots_keep_the_users_backend(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MPLBACKEND", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "pdf"
    assert result["pyplot"] is False
    assert result["png"] == [True, True, True, True]
