"""Training on several processes (torch.distributed, gloo on CPU) equals one process at the
global batch: flat-GMM EM, DCGMM's closed-form SGD, a gradient objective; resume on another
number of processes; a killed rank stops the others with one line naming it."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import deepmix
from deepmix.errors import DistributedError
from deepmix.models import DCGMM, MixtureDensity, rat_spn
from deepmix.training import TrainConfig, fit, train
from deepmix.training.objectives.em import GaussianMixtureEM
from deepmix.utils.distributed import SINGLE, init_from_env, shard_bounds

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available()
    or "fork" not in mp.get_all_start_methods(),
    reason="needs torch.distributed with gloo and fork")

TIMEOUT = 15.0   # DEEPMIX_DIST_TIMEOUT of the worker processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, fn, args, out: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      DEEPMIX_DIST_TIMEOUT=str(TIMEOUT))
    torch.set_num_threads(1)
    t0 = time.monotonic()
    try:
        result = {"ok": fn(rank, *args)}
    except BaseException as exc:   # noqa: BLE001 - reported to the test
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = time.monotonic() - t0
    torch.save(result, out)
    if dist.is_initialized():
        dist.destroy_process_group()


def _run(size: int, fn, tmp_path: Path, *args) -> list[dict | None]:
    """Run ``fn(rank, *args)`` on ``size`` forked gloo processes; their results (None for a
    process that died)."""
    port = _free_port()
    ctx = mp.get_context("fork")
    outs = [tmp_path / f"rank{r}.pt" for r in range(size)]
    for o in outs:
        o.unlink(missing_ok=True)          # a result is never one of an earlier run
    procs = [ctx.Process(target=_worker, args=(r, size, port, fn, args, outs[r]))
             for r in range(size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.kill()
            pytest.fail("a worker process hung")
    return [torch.load(o) if o.exists() else None for o in outs]


def _ok(results: list[dict | None]) -> list:
    for r in results:
        assert r is not None and "error" not in r, r
    return [r["ok"] for r in results]


def _close(a: dict, b: dict, rtol: float, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def _blobs(n: int = 300, d: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0] * d, [4.0] * d, [-4.0, 4.0] * (d // 2)], dtype=torch.float64)
    return centres[torch.randint(0, 3, (n,), generator=g)] + torch.randn(n, d, generator=g,
                                                                         dtype=torch.float64)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------- units
def test_shards_cover_the_batch_once_and_one_process_is_a_no_op():
    for m in (0, 1, 5, 100, 101):
        for size in (1, 2, 3):
            parts = [shard_bounds(m, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == m
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1
    t = torch.arange(3.0)
    SINGLE.all_reduce_([t])
    assert torch.equal(t, torch.arange(3.0))


def test_a_bad_launch_environment_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistributedError, match="MASTER_ADDR is not set"):
        init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env() is SINGLE


def _reduce(rank: int) -> list[torch.Tensor]:
    world = init_from_env()
    a = torch.full((2, 3), float(rank + 1), dtype=torch.float32)
    b = torch.tensor([rank + 10], dtype=torch.long)
    c = torch.tensor(0.5 * rank, dtype=torch.float64)
    world.all_reduce_([a, b, c])
    return [a, b, c]


def test_all_reduce_sums_a_list_of_mixed_tensors_in_place(tmp_path):
    for a, b, c in _ok(_run(2, _reduce, tmp_path)):
        assert torch.equal(a, torch.full((2, 3), 3.0)) and a.dtype == torch.float32
        assert torch.equal(b, torch.tensor([21])) and b.dtype == torch.long
        assert float(c) == 0.5


# ----------------------------------------------------------------------------- equivalence
def _gmm_em(rank: int, x: torch.Tensor, batch: int):
    model = MixtureDensity(3, 4, "diag", dtype=torch.float64)
    rows = fit(model, x, "em", epochs=4, batch_size=batch, seed=2)
    return [r["loss"] for r in rows if "loss" in r], _state(model)


def test_flat_gmm_em_on_two_processes_equals_one(tmp_path):
    x = _blobs()
    losses, state = _gmm_em(0, x, 100)
    results = _ok(_run(2, _gmm_em, tmp_path, x, 50))
    for got_losses, got_state in results:
        torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(losses), rtol=1e-6,
                                   atol=0)
        _close(got_state, state, rtol=1e-6, atol=1e-12)


def _gmm_em_whole(rank: int, x: torch.Tensor):
    objective = GaussianMixtureEM()
    model = MixtureDensity(3, 4, "diag", dtype=torch.float64)
    rows = fit(model, x, objective, epochs=3, seed=2)         # the default: all rows a step
    return [r["loss"] for r in rows if "loss" in r], _state(model), objective._fused.z.shape[0]


def test_batch_em_ranks_build_the_design_matrix_of_their_own_rows_only(tmp_path):
    x = _blobs(301)
    losses, state, n = _gmm_em_whole(0, x)
    assert n == 301
    results = _ok(_run(2, _gmm_em_whole, tmp_path, x))
    assert [r[2] for r in results] == [151, 150]
    for got_losses, got_state, _ in results:
        torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(losses), rtol=1e-6,
                                   atol=0)
        _close(got_state, state, rtol=1e-6, atol=1e-12)


def test_rank_rows_are_the_shards_of_every_batch():
    from deepmix.training.objectives.base import LoopInfo
    from deepmix.utils.distributed import World
    got = []
    for rank in range(2):
        info = LoopInfo(n=201, batch_size=100, steps_per_epoch=3, epochs=1, seed=0,
                        device=torch.device("cpu"), world=World(rank=rank, size=2))
        got.append(info.rank_rows())
    assert got[0] == [slice(0, 50), slice(100, 150), slice(200, 201)]
    assert got[1] == [slice(50, 100), slice(150, 200)]      # the 1-row last batch: none


def _other_em(rank: int, name: str, batch: int):
    x = _blobs(240, 6)
    if name == "circuit-em":
        model = rat_spn(6, 2, 2, 3, seed=2, dtype=torch.float64)
        rows = fit(model, x, "em", epochs=3, batch_size=batch, seed=2, initialize=False)
    else:
        model = MixtureDensity(3, 6, "full", dtype=torch.float64)
        rows = fit(model, x, "stepwise-em", epochs=2, batch_size=batch, seed=2)
    return [r["loss"] for r in rows if "loss" in r], _state(model)


@pytest.mark.parametrize("name", ["circuit-em", "stepwise-em"])
def test_circuit_em_and_stepwise_em_on_two_processes_equal_one(tmp_path, name):
    losses, state = _other_em(0, name, 80)
    for got_losses, got_state in _ok(_run(2, _other_em, tmp_path, name, 40)):
        torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(losses), rtol=1e-6,
                                   atol=0)
        _close(got_state, state, rtol=1e-6, atol=1e-9)


def _dcgmm(rank: int, images, labels, batch: int):
    model = DCGMM("F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)-C(10)", (8, 8, 1), seed=1)
    cfg = TrainConfig(epochs=1, batch_size=batch, delay=0.0, window=3, classifier_lr=0.3,
                      sigma_decay=0.5, ratio_high=1.0)
    rows = train(model, images, labels, config=cfg, stop_after_steps=10, progress=False)
    return rows, _state(model)


def test_dcgmm_ten_steps_on_two_processes_equal_one_process_at_twice_the_batch(tmp_path,
                                                                               digits):
    images, labels = digits[0][:200], digits[1][:200]
    rows, state = _dcgmm(0, images, labels, 20)
    results = _ok(_run(2, _dcgmm, tmp_path, images, labels, 10))
    for got_rows, got_state in results:
        assert [r["step"] for r in got_rows] == [r["step"] for r in rows]
        for a, b in zip(got_rows, rows):
            assert a["sigma"] == pytest.approx(b["sigma"], rel=1e-6)
            assert a["classifier_loss"] == pytest.approx(b["classifier_loss"], rel=1e-5)
        _close(got_state, state, rtol=1e-5, atol=1e-5)
    assert state["layers.1.mu"].ne(DCGMM("F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)-C(10)", (8, 8, 1),
                                         seed=1).state_dict()["layers.1.mu"]).any()


def _mle(rank: int, x: torch.Tensor, batch: int, out=None, **kw):
    model = MixtureDensity(3, 4, "diag", dtype=torch.float64)
    rows = fit(model, x, "mle", epochs=3, batch_size=batch, seed=2, lr=0.05, out_dir=out, **kw)
    return [r["loss"] for r in rows if "loss" in r], _state(model)


def test_gradient_objective_on_two_processes_equals_one_at_the_global_batch(tmp_path):
    x = _blobs(251)          # the last batch (51 rows) splits 26 + 25
    losses, state = _mle(0, x, 100)
    for got_losses, got_state in _ok(_run(2, _mle, tmp_path, x, 50)):
        torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(losses), rtol=1e-6,
                                   atol=0)
        _close(got_state, state, rtol=1e-6, atol=1e-9)


def _empty_shard(rank: int, name: str, batch: int):
    model = MixtureDensity(3, 4, "diag", dtype=torch.float64)
    fit(model, _blobs(201), name, epochs=2, batch_size=batch, seed=2)
    return _state(model)


@pytest.mark.parametrize("name", ["em", "stepwise-em", "mle"])
def test_an_empty_shard_of_a_short_last_batch_joins_the_reduction(tmp_path, name):
    state = _empty_shard(0, name, 100)   # the last batch holds 1 row: rank 1 gets none
    for got in _ok(_run(2, _empty_shard, tmp_path, name, 50)):
        _close(got, state, rtol=1e-6, atol=1e-9)


def _mle_run(rank: int, x, out, stop):
    return _mle(rank, x, 50, out=out, stop_after_steps=stop)


def test_a_two_process_run_resumes_on_one_process_to_the_same_result(tmp_path):
    x = _blobs(250)
    _ok(_run(2, _mle_run, tmp_path, x, tmp_path / "full", None))
    _ok(_run(2, _mle_run, tmp_path, x, tmp_path / "part", 4))   # stops inside epoch 2
    assert deepmix.load(tmp_path / "part").state_dict().keys()
    model = MixtureDensity(3, 4, "diag", dtype=torch.float64)
    rows = fit(model, x, "mle", out_dir=tmp_path / "part", resume=True)
    full = deepmix.load(tmp_path / "full")
    _close(_state(model), _state(full), rtol=1e-6, atol=1e-9)
    assert rows[-1]["step"] == 9      # 3 epochs of 3 global batches of 100 (2 x 50)


def _dcgmm_run(rank: int, images, labels, out, stop):
    model = DCGMM("F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)-C(10)", (8, 8, 1), seed=1)
    cfg = TrainConfig(epochs=2, batch_size=10, delay=0.2, window=3, classifier_lr=0.3)
    train(model, images, labels, config=cfg, out_dir=out, stop_after_steps=stop,
          progress=False)


def test_a_two_process_dcgmm_run_resumes_mid_epoch_on_one_process(tmp_path, digits):
    images, labels = digits[0][:160], digits[1][:160]     # 8 global batches of 20 per epoch
    _ok(_run(2, _dcgmm_run, tmp_path, images, labels, tmp_path / "full", None))
    _ok(_run(2, _dcgmm_run, tmp_path, images, labels, tmp_path / "part", 11))
    model = deepmix.load(tmp_path / "part")
    rows = train(model, images, labels, out_dir=tmp_path / "part", resume=True, progress=False)
    assert rows[-1]["step"] == 16
    _close(_state(model), _state(deepmix.load(tmp_path / "full")), rtol=1e-5, atol=1e-5)


def _mle_resume(rank: int, x, out):
    model = MixtureDensity(3, 4, "diag", dtype=torch.float64)
    fit(model, x, "mle", out_dir=out, resume=True)
    return _state(model)


def test_a_one_process_run_resumes_on_two_processes_to_the_same_result(tmp_path):
    x = _blobs(250)
    _, full = _mle(0, x, 100)
    _mle(0, x, 100, out=tmp_path / "part", stop_after_steps=4)
    for got in _ok(_run(2, _mle_resume, tmp_path, x, tmp_path / "part")):
        _close(got, full, rtol=1e-6, atol=1e-9)


def _interrupted(rank: int, x, out):
    def ctrl_c(row):
        if rank == 1 and row.get("epoch") == 1:      # Ctrl-C reaches rank 1 only
            os.kill(os.getpid(), signal.SIGINT)
    try:
        _mle(rank, x, 50, out=out, callback=ctrl_c)
    except KeyboardInterrupt:
        return "interrupted"
    return "finished"


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    from deepmix.training.checkpoint import load_checkpoint

    x = _blobs(250)
    assert _ok(_run(2, _interrupted, tmp_path, x, tmp_path / "run")) == ["interrupted"] * 2
    model = MixtureDensity(3, 4, "diag", dtype=torch.float64)
    assert load_checkpoint(model, tmp_path / "run")["step"] == 6   # the next agreement
    fit(model, x, "mle", out_dir=tmp_path / "run", resume=True)
    _close(_state(model), _mle(0, x, 100)[1], rtol=1e-6, atol=1e-9)


def _killed(rank: int, x, out):
    def die(row):
        if rank == 1 and row.get("epoch") == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return _mle(rank, x, 50, out=out, callback=die)


def test_a_killed_rank_stops_the_others_with_one_line_naming_it(tmp_path):
    x = _blobs(250)
    rank0, rank1 = _run(2, _killed, tmp_path, x, tmp_path / "run")
    assert rank1 is None                                   # killed
    message = rank0["error"]
    assert message.startswith("DistributedError: ") and "\n" not in message
    assert "rank 1 stopped" in message and f"{TIMEOUT:g} s" in message
    assert rank0["seconds"] < TIMEOUT + 10
    model = deepmix.load(tmp_path / "run")                 # the last checkpoint (epoch 2)
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())


def test_train_nproc_two_equals_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(deepmix.__file__).parents[1])}
    base = [sys.executable, "-m", "deepmix.cli.main", "train", "--model", "gmm", "--data",
            "digits", "--epochs", "2", "--no-progress", "--k", "4"]
    two = subprocess.run([*base, "--nproc", "2", "--batch-size", "100", "--out",
                          str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("run folder:") == 1                     # rank 0 reports
    from deepmix.cli.main import main

    assert main([*base[3:], "--batch-size", "200", "--out", str(tmp_path / "one")]) == 0
    _close(_state(deepmix.load(tmp_path / "two")), _state(deepmix.load(tmp_path / "one")),
           rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------- DRMM and the deep GMM
def _drmm_model(patch: bool):
    from deepmix.models import DRMM, DRMMConfig

    if patch:   # three stages: each later one initialises on its first global batch
        return DRMM.from_config(DRMMConfig(n_features=64, n_components=4, n_layers=1,
                                           image_shape=(8, 8, 1), patch_layers=(1, 1),
                                           patch_components=(3, 3), dtype="float64"))
    return DRMM(DRMMConfig(n_features=2, n_components=4, n_layers=2, dtype="float64"))


def _drmm_data(patch: bool) -> torch.Tensor:
    from deepmix.data import drmm_sierpinski

    if patch:
        return torch.rand(72, 64, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    return drmm_sierpinski(250, seed=0, dtype=torch.float64)  # last batch 50: 25 + 25


def _drmm(rank: int, patch: bool, batch: int, out=None, stop=None, alpha=0.01):
    model = _drmm_model(patch)
    rows = model.fit(_drmm_data(patch), epochs=3, batch_size=batch, seed=1, init_batch=64,
                     out_dir=out, stop_after_steps=stop, alpha=alpha)
    return rows, _state(model)


@pytest.mark.parametrize("patch,alpha", [(False, 0.01), (False, 0.0), (True, 0.01)])
def test_drmm_on_two_processes_equals_one_at_the_global_batch(tmp_path, patch, alpha):
    batch = 24 if patch else 100
    rows, state = _drmm(0, patch, batch, alpha=alpha)
    for got_rows, got_state in _ok(_run(2, _drmm, tmp_path, patch, batch // 2, None, None,
                                        alpha)):
        assert [r["step"] for r in got_rows] == [r["step"] for r in rows]
        for a, b in zip(got_rows[1:], rows[1:]):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
            assert (a["rho_e"], a["lr"]) == (b["rho_e"], b["lr"])
        _close(got_state, state, rtol=1e-5, atol=1e-5)


def test_a_two_process_drmm_run_resumes_on_one_process(tmp_path):
    _ok(_run(2, _drmm, tmp_path, False, 50, tmp_path / "part", 4))   # inside epoch 2
    model = deepmix.load(tmp_path / "part")
    rows = model.fit(_drmm_data(False), out_dir=tmp_path / "part", resume=True)
    assert rows[-1]["step"] == 9
    _close(_state(model), _drmm(0, False, 100)[1], rtol=1e-5, atol=1e-5)


def _hard_em(rank: int, batch: int, out=None, stop=None, prior="uniform", min_usage=110):
    from deepmix.models import DeepGMM, DeepGMMConfig

    x = _blobs(211, 2)      # E-step shards 106 + 105; the last batch (11 rows) 6 + 5
    model = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2,full2", seed=3,
                                  search="coordinate", dtype="float64", prior=prior))
    obj = deepmix.training.make_objective("deep-gmm", "hard-em", {
        "lr": 0.02, "first_m_epochs": 1, "m_epochs": 1, "min_usage": min_usage})
    rows = fit(model, x, obj, epochs=3, batch_size=batch, seed=2, out_dir=out,
               stop_after_steps=stop)
    return rows, _state(model), obj.paths


def test_deep_gmm_hard_em_on_two_processes_equals_one_and_resumes_on_one(tmp_path):
    rows, state, paths = _hard_em(0, 100)
    assert sum(r["reseeded"] for r in rows[1:]) > 0          # the re-seeding draws too
    for got_rows, got_state, got_paths in _ok(_run(2, _hard_em, tmp_path, 50)):
        assert torch.equal(got_paths, paths)
        for a, b in zip(got_rows[1:], rows[1:]):
            assert a["reseeded"] == b["reseeded"]
            assert a["e_step_lower_bound"] == pytest.approx(b["e_step_lower_bound"], rel=1e-9)
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        _close(got_state, state, rtol=1e-5, atol=1e-5)
    # Stopped after its first EM iteration on 2 processes, resumed on 1.
    _ok(_run(2, _hard_em, tmp_path, 50, tmp_path / "part", 3))
    model = deepmix.load(tmp_path / "part")
    fit(model, _blobs(211, 2), "hard-em", out_dir=tmp_path / "part", resume=True)
    _close(_state(model), state, rtol=1e-5, atol=1e-5)


def _empty_family(rank: int, family: str, batch: int):
    from deepmix.models import DeepGMM, DeepGMMConfig

    if family == "drmm":          # the image hierarchy: an empty shard has nothing to encode
        model = _drmm_model(True)
        model.fit(_drmm_data(True)[:49], epochs=2, batch_size=batch, seed=1, init_batch=64)
        return _state(model)
    model = DeepGMM(DeepGMMConfig(shape=(1, 1, 2), fold=1, layers="full2,full2", seed=3,
                                  dtype="float64", gating=True, gate_hidden=4))
    fit(model, _blobs(201, 2), "hard-em", epochs=2, batch_size=batch, seed=2, lr=0.02,
        gating_epochs=1)
    return _state(model)


def test_deep_gmm_factorised_prior_on_two_processes_equals_one(tmp_path):
    # The prior's M step counts the assembled paths of every rank: its weights, and so the
    # E steps that use them, must equal the one-process fit's.
    # (min_usage 1: re-seeded copies would share their source's count and keep it uniform)
    rows, state, paths = _hard_em(0, 100, prior="factorised", min_usage=1)
    assert any(k.startswith("prior") for k in state)
    w = [v for k, v in state.items() if k.startswith("prior")]
    assert any(float(t.std()) > 1e-3 for t in w)               # the M step moved the weights
    for got_rows, got_state, got_paths in _ok(_run(2, _hard_em, tmp_path, 50, None, None,
                                                   "factorised", 1)):
        assert torch.equal(got_paths, paths)
        for a, b in zip(got_rows[1:], rows[1:]):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        _close(got_state, state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["drmm", "deep-gmm"])
def test_an_empty_drmm_or_hard_em_shard_joins_the_reductions(tmp_path, family):
    batch = 24 if family == "drmm" else 100      # the last batch holds 1 row
    state = _empty_family(0, family, batch)
    for got in _ok(_run(2, _empty_family, tmp_path, family, batch // 2)):
        _close(got, state, rtol=1e-5, atol=1e-5)
