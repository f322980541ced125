"""Peer run for benchmarks/circuits_vs_peers.py, executed inside the spflow virtual environment.

usage: python spflow_einet.py DATA.npz [--epochs 1] [--batch-size 100] [--lr 1e-2] [--seed 0]
       [--threads 1] [--layer-type linsum|einsum] [--depth 3] [--repetitions 5] [--sums 10]
       [--leaves 10]

Trains spflow's Einet (``spflow.zoo.einet.Einet`` over one ``Normal`` leaf module on every
variable, spflow's default initialisation) by Adam on the mean negative log-likelihood, one
shuffled pass per epoch, and prints one JSON line: training seconds, test log-likelihood
(mean nats per row), train log-likelihood of the last epoch's batches, versions. DATA.npz holds
``train`` and ``test`` float32 arrays (N, D). Imports nothing of deepmix.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layer-type", default="linsum", choices=["linsum", "einsum"])
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--sums", type=int, default=10)
    ap.add_argument("--leaves", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import spflow
    from spflow.modules.leaves import Normal
    from spflow.zoo.einet import Einet

    with np.load(args.data) as f:
        train = torch.from_numpy(np.ascontiguousarray(f["train"], dtype=np.float32))
        test = torch.from_numpy(np.ascontiguousarray(f["test"], dtype=np.float32))
    D = train.shape[1]
    leaf = Normal(scope=list(range(D)), out_channels=args.leaves, num_repetitions=args.repetitions)
    model = Einet([leaf], num_classes=1, num_sums=args.sums, num_leaves=args.leaves, depth=args.depth,
                  num_repetitions=args.repetitions, layer_type=args.layer_type)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(train), generator=gen)
        losses = []
        for i in range(0, len(train), args.batch_size):
            batch = train[order[i:i + args.batch_size]]
            loss = -model.log_likelihood(batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        ll = torch.cat([model.log_likelihood(test[i:i + 500]).reshape(-1)
                        for i in range(0, len(test), 500)])
    print(json.dumps({"seconds": seconds, "test_ll": float(ll.double().mean()),
                      "train_ll_last_epoch": -float(np.mean(losses)),
                      "nonfinite_test_rows": int((~torch.isfinite(ll)).sum()),
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "layer_type": args.layer_type, "spflow": getattr(spflow, "__version__", "?"),
                      "torch": torch.__version__, "threads": args.threads}))


if __name__ == "__main__":
    main()
