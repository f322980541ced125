"""Speed and memory of one hard-EM iteration of the spec's MNIST deep GMMs (issue 20's goals).

usage: .venv/bin/python benchmarks/deep_gmm/em_speed.py [--quick] [--models shared unshared]
       [--updates 3000] [--threads 2]

Models (spec deep-gmm.md section 6, fold r = 4, float32, E step in chunks of 1000):

- ``shared``: 3 HC (5x5) + 4 shared block-diagonal layers x 4 (Table 2's k = 4, 4^4 paths:
  exact search);
- ``unshared``: the Table 4 analogue, 3 HC, then 3 x (unshared bank of 4, 3 HC) with the last
  HC dropped (4^147 paths: coordinate search from the previous paths plus 2 random restarts).

Each model is first initialised and trained briefly on the library's loop (1 EM iteration,
500 Adam updates: the data-dependent whitening init and paths that mean something), then on
the 50 000 training rows (first 50k of MNIST train, dequantised to [-1, 1)):

- ``ll_pass_s``: one log-likelihood pass, the path scores s_c(x) of every row under the current
  paths (what an M step's forward pass computes), in chunks of 1000, no gradient;
- ``e_step_s``: the E step as the objective runs it (``DeepGMM.search`` from the previous paths,
  restarts drawn from the run's generator); ``e_over_ll`` = e_step_s / ll_pass_s;
- ``m_step_s``: a later M step, ``--updates`` minibatch Adam updates at batch 100 (the spec's
  3000), the objective's own loss; ``iteration_s`` = E + M step;
- ``peak_rss_gb``: the process's peak resident memory so far (data included).

Goals (issue 20): iteration_s < 180, e_over_ll <= 3, peak_rss_gb <= 4. ``--quick``: 5000 rows,
300 updates. Writes benchmarks/results/deep_gmm_em_speed[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time

import torch

from common import splits, train_hard_em, write_results
from deepmix.models import DeepGMM, DeepGMMConfig

MODELS = {
    "shared": ",".join(["hc5"] * 3 + ["bd4"] * 4),
    "unshared": ",".join(["hc5"] * 3 + ["ubd4", "hc5", "hc5", "hc5"] * 2 + ["ubd4"]),
}


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1 << 30) * (1 if sys.platform == "darwin" else 1024)


def ll_pass(model: DeepGMM, x: torch.Tensor, paths: torch.Tensor, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.score_folded(model.fold(x[a:a + chunk]), paths[a:a + chunk])
                          for a in range(0, x.shape[0], chunk)])


def m_step(model: DeepGMM, x: torch.Tensor, paths: torch.Tensor, updates: int,
           batch: int, lr: float, seed: int) -> None:
    """``updates`` Adam steps on -mean s_c(x) of random minibatches (the objective's step)."""
    opt = torch.optim.Adam(model.transform_parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=g)
    pos = 0
    for _ in range(updates):
        if pos + batch > x.shape[0]:
            order, pos = torch.randperm(x.shape[0], generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        opt.zero_grad(set_to_none=True)
        loss = -model.score_folded(model.fold(x[idx]), paths[idx]).mean()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["shared", "unshared"])
    ap.add_argument("--updates", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    updates = args.updates or (300 if args.quick else 3000)
    train, _, _ = splits(args.quick)
    x = train.float()
    del train
    rows = []
    for name in args.models:
        model = DeepGMM(DeepGMMConfig(shape=(28, 28, 1), fold=4, layers=MODELS[name],
                                      dtype="float32"))
        t = time.perf_counter()
        obj = train_hard_em(model, x, first_updates=500, later_updates=500, em_iterations=1,
                            lr=args.lr)
        warm = time.perf_counter() - t
        paths = obj.paths
        chunk = model.config.chunk_size
        t = time.perf_counter()
        ll = ll_pass(model, x, paths, chunk)
        ll_s = time.perf_counter() - t
        t = time.perf_counter()
        new_paths, scores = model.search(x, paths, generator=obj.e_generator(1))
        e_s = time.perf_counter() - t
        t = time.perf_counter()
        m_step(model, x, new_paths, updates, 100, args.lr, seed=1)
        m_s = time.perf_counter() - t
        row = {"model": name, "layers": MODELS[name], "params": model.n_params(),
               "log_paths": round(model.log_n_paths, 2), "search": model.search_method(),
               "rows": x.shape[0], "warmup_s": round(warm, 1), "ll_pass_s": round(ll_s, 2),
               "e_step_s": round(e_s, 2), "e_over_ll": round(e_s / ll_s, 2),
               "m_updates": updates, "m_step_s": round(m_s, 1),
               "iteration_s": round(e_s + m_s, 1),
               "e_step_gain_nats": round(float((scores - ll).mean()), 2),
               "peak_rss_gb": round(peak_rss_gb(), 2)}
        rows.append(row)
        print(f"{name:9s} {row['params']:7d} params  {row['search']:10s} LL pass "
              f"{ll_s:6.2f} s  E step {e_s:6.2f} s ({row['e_over_ll']:.2f}x)  M step "
              f"({updates} updates) {m_s:6.1f} s  iteration {row['iteration_s']:6.1f} s  "
              f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)
    out = write_results("deep_gmm_em_speed" + ("_quick" if args.quick else ""),
                        {"quick": args.quick, "threads": torch.get_num_threads(),
                         "torch": torch.__version__, "machine": platform.machine(),
                         "goals": {"iteration_s": "< 180", "e_over_ll": "<= 3",
                                   "peak_rss_gb": "<= 4"}},
                        rows, ["model", "params", "search", "rows", "ll_pass_s", "e_step_s",
                               "e_over_ll", "m_updates", "m_step_s", "iteration_s",
                               "peak_rss_gb"])
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
