r"""The process group of a run: who am I, how many are we, and one flattened all-reduce.

deepmix scales out on :mod:`torch.distributed` (gloo on CPU, NCCL on CUDA) and ships no cluster
machinery of its own: processes are started by ``torchrun`` (or ``deepmix train --nproc N``,
which runs torchrun's own launcher), and they find each other through the usual environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.

:func:`current_world` joins that group once (with a finite timeout, ``DEEPMIX_DIST_TIMEOUT``
seconds, default 300) and returns a :class:`World`; without ``WORLD_SIZE > 1`` it is
:data:`SINGLE`, whose collectives do nothing, so one process computes exactly what it did
before distribution existed.

:meth:`World.all_reduce_` sums a list of tensors over the processes in ONE collective call: the
tensors are flattened into one buffer (their common dtype), reduced, and copied back.
A collective that fails because a peer died or stopped answering raises
:class:`~deepmix.errors.DistributedError`, one line naming the rank(s) that did not answer.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch

from ..errors import DistributedError

__all__ = ["World", "SINGLE", "current_world", "init_from_env", "process_rank", "shard_bounds",
           "launch_local", "launched", "COMM_STATS", "timeout_seconds", "ENV_TIMEOUT"]

#: Environment variable: seconds a collective (and the rendezvous) may wait for a peer.
ENV_TIMEOUT = "DEEPMIX_DIST_TIMEOUT"
_DEFAULT_TIMEOUT = 300.0
# Keys of the liveness roll call in the rendezvous store after a failed collective.
_ALIVE_KEY = "deepmix/alive/{call}/{rank}"


def timeout_seconds() -> float:
    """The collective timeout: ``$DEEPMIX_DIST_TIMEOUT`` seconds (default 300), never infinite."""
    text = os.environ.get(ENV_TIMEOUT)
    if not text:
        return _DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise DistributedError(f"{ENV_TIMEOUT} must be a positive number of seconds, got {text!r}")
    return value


def shard_bounds(m: int, rank: int, size: int) -> tuple[int, int]:
    """This rank's contiguous part ``[lo, hi)`` of ``m`` rows split over ``size`` ranks as
    evenly as possible (the first ``m % size`` ranks get one row more, as ``tensor_split``)."""
    q, r = divmod(m, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def _unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy consecutive pieces of the 1-D ``flat`` back into ``tensors`` (the inverse of the
    ``torch.cat`` of their flattened values)."""
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view(t.shape))
        offset += n


#: How long a CPU collective is waited for by polling before a blocking wait (seconds).
POLL_SECONDS = 0.05


def _finish(work, cpu: bool) -> None:
    """Wait for an async collective. On CPU (gloo) it is polled, yielding the core, for up to
    :data:`POLL_SECONDS` before the blocking ``wait``. Why: a blocked rank's core goes idle,
    and waking an idle virtual CPU costs milliseconds on some VMs; gloo's ring passes several
    messages per all-reduce, each waiting for such a wake-up. On a 2-core VM (2026-12-07) the
    0.9 MB all-reduce of a DCGMM 2L-c step took 2.9-4.0 ms blocking and 0.6-0.75 ms polled
    (2 idle ranks, ``benchmarks/scaling.py``), and 2 processes trained 2L-c at 1.06-1.09x one
    process blocking, 1.13-1.40x polled (the host is noisy). A long wait (a slow peer, a
    checkpoint) still ends in the blocking wait, so no core spins for long; NCCL work is
    waited for as usual (its ``wait`` does not block the host)."""
    if cpu:
        deadline = time.perf_counter() + POLL_SECONDS
        while not work.is_completed() and time.perf_counter() < deadline:
            os.sched_yield()
    work.wait()


@dataclass(frozen=True)
class World:
    """The processes of a run: ``rank`` of ``size`` (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, metrics and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_reduce_(self, tensors: Sequence[torch.Tensor]) -> None:
        r"""Sum ``tensors`` over all ranks, in place, with ONE collective call.

        They are flattened into one buffer of their promoted dtype (integer counts travel as
        floats beside float statistics: exact below :math:`2^{24}` in float32), reduced, and
        copied back. A no-op in one process.
        """
        if self.size == 1 or not tensors:
            return
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])
        self._collective(lambda: _finish(torch.distributed.all_reduce(flat, async_op=True),
                                         flat.device.type == "cpu"),
                         "all-reduce", flat.numel() * flat.element_size())
        _unflatten_into(flat, tensors)

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` with rank ``src``'s values (one call per dtype present)."""
        if self.size == 1 or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            self._collective(lambda: torch.distributed.broadcast(flat, src), "broadcast",
                             flat.numel() * flat.element_size())
            _unflatten_into(flat, group)

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """Whether ``flag`` is true on any rank (one small all-reduce); ``flag`` in one process."""
        if self.size == 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        self.all_reduce_([t])
        return bool(t.item() > 0)

    def _collective(self, call, what: str, nbytes: int) -> None:
        t = time.perf_counter()
        try:
            call()
        except (RuntimeError, ValueError) as exc:   # DistBackendError is a RuntimeError
            raise DistributedError(self._failure_message(what, exc)) from None
        if what == "all-reduce":     # (the one broadcast of a fresh run is not a step's cost)
            COMM_STATS["calls"] += 1
            COMM_STATS["bytes"] += nbytes
            COMM_STATS["seconds"] += time.perf_counter() - t

    def _failure_message(self, what: str, exc: BaseException) -> str:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # gloo prefixes its source location: "[.../pair.cc:553] Connection closed by peer ..."
        detail = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", detail)
        detail = detail.split(". This is typically")[0][:120]
        lost = self._unresponsive()
        who = (f"rank {', '.join(map(str, lost))} stopped" if lost else "a peer stopped")
        return (f"distributed training stopped on rank {self.rank} of {self.size}: {who} "
                f"(or did not answer within {timeout_seconds():g} s) during "
                f"{'an' if what[0] in 'aeiou' else 'a'} {what} "
                f"[{detail}]")

    def _unresponsive(self) -> list[int]:
        """A roll call in the rendezvous store: the ranks that do not check in within a few
        seconds. If the store itself is gone, its host (rank 0 unless torchrun's agent holds
        it) is the one that stopped."""
        global _calls
        _calls += 1
        others = [r for r in range(self.size) if r != self.rank]
        try:
            from torch.distributed.distributed_c10d import _get_default_store

            store = _get_default_store()
            store.set(_ALIVE_KEY.format(call=_calls, rank=self.rank), "1")
            keys = {r: _ALIVE_KEY.format(call=_calls, rank=r) for r in others}
            deadline = time.monotonic() + min(3.0, timeout_seconds())
            missing = list(others)
            while missing and time.monotonic() < deadline:
                missing = [r for r in missing if not store.check([keys[r]])]
                if missing:
                    time.sleep(0.1)
            return missing
        except Exception:  # noqa: BLE001 - the store is unreachable: its host died
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
                return []
            return [0] if self.rank != 0 else others


_calls = 0
#: All-reduces of this process so far: ``calls``, ``bytes`` (buffer sizes) and ``seconds``
#: spent in them (waiting for slower ranks included); read by ``benchmarks/scaling.py``.
COMM_STATS = {"calls": 0, "bytes": 0, "seconds": 0.0}
#: One process: every collective is a no-op.
SINGLE = World()


def init_from_env(device: str | torch.device = "cpu") -> World:
    """Join the process group described by the environment (``WORLD_SIZE > 1``), once.

    Backend: NCCL for a CUDA ``device``, else gloo; ``init_method="env://"`` reads ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``. The timeout is :func:`timeout_seconds`.
    Returns :data:`SINGLE` when the environment names no group of several processes.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                               f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                               f"{os.environ.get('LOCAL_RANK')!r}") from None
    if size <= 1:
        return SINGLE
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DistributedError(f"WORLD_SIZE={size} but {name} is not set: launch with "
                                   f"torchrun or deepmix train --nproc N")
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise DistributedError("this torch build has no gloo backend for CPU training")
    if cuda:
        torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=size,
                                timeout=timedelta(seconds=timeout_seconds()))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"rank {rank} of {size} could not join the process group at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within "
                               f"{timeout_seconds():g} s: {first}") from None
    return World(rank, size, local)


def process_rank() -> int:
    """This process's rank without joining anything: the joined group's, else ``$RANK``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def current_world(device: str | torch.device = "cpu") -> World:
    """The run's :class:`World`: the joined process group, joining it from the environment
    first when ``WORLD_SIZE > 1``; :data:`SINGLE` otherwise."""
    return init_from_env(device)


def launched() -> bool:
    """Whether this process was started by a launcher (torchrun, ``--nproc``): ``WORLD_SIZE``
    is set."""
    return bool(os.environ.get("WORLD_SIZE"))


def launch_local(nproc: int, args: Sequence[str], *, threads: int | None = 1) -> int:
    """Run ``python ARGS`` as ``nproc`` local processes of one process group: torchrun's own
    launcher (:func:`torch.distributed.launcher.api.elastic_launch`, standalone rendezvous on
    a free port), as ``torchrun --standalone --nproc-per-node N`` would.

    Every worker gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
    and, unless already set, ``DEEPMIX_THREADS=threads`` (one thread each by default: N workers
    with several threads on N cores compete for them). Returns 0, 130 after Ctrl-C (the
    workers agree on it and rank 0 checkpoints), or 2 when a worker stopped with its own
    one-line error; a worker that dies otherwise raises
    :class:`~deepmix.errors.DistributedError` naming the first failed rank, after torch's
    agent has stopped the others.
    """
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if threads is not None and not os.environ.get("DEEPMIX_THREADS"):
        os.environ["DEEPMIX_THREADS"] = str(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # The agent's own log lines would repeat what the one error line below says.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, shutdown_timeout=120)
    try:
        # Ctrl-C reaches this agent (the workers have process groups of their own); it passes
        # SIGINT on to them, and they stop together at the next agreement and checkpoint.
        elastic_launch(config, entrypoint=sys.executable)(*args)
    except SignalException:
        return 130
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode == 130:
            return 130
        if failure.exitcode == 2:
            return 2     # the worker printed its own one-line "deepmix: error: ..." already
        how = (f"signal {failure.signal_name()}" if failure.exitcode < 0
               else f"exit status {failure.exitcode}")
        raise DistributedError(f"rank {rank} (pid {failure.pid}) of {nproc} died ({how}); the "
                               f"other ranks were stopped; the last checkpoint stays loadable "
                               f"(continue with --resume)") from None
    return 0
