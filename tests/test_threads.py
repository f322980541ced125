"""The thread governor: torch's threads follow the cores other processes leave free."""

import torch

from deepmix.utils import threads
from deepmix.utils.threads import ThreadGovernor, other_runnable_threads, thread_target


def test_target_is_the_free_cores_within_the_request():
    assert thread_target(2, 0, 2) == 2
    assert thread_target(2, 1, 2) == 1
    assert thread_target(4, 7, 2) == 1          # never below one
    assert thread_target(1, 0, 8) == 1          # never above the request


def test_reader_counts_other_processes_only():
    n = other_runnable_threads()
    assert n is None or n >= 0


def test_governor_yields_a_busy_core_and_takes_it_back(monkeypatch):
    load = [1]
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: load[0])
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        gov = ThreadGovernor(2, interval=0.0)    # the first sample acts at once
        assert torch.get_num_threads() == 1
        load[0] = 0
        gov.tick()
        assert torch.get_num_threads() == 1     # later, one sample is not enough (hysteresis)
        gov.tick()
        assert torch.get_num_threads() == 2 and gov.changes == 2
        load[0] = 1
        gov.tick()
        load[0] = 0                             # a blip: no change
        gov.tick()
        gov.tick()
        assert torch.get_num_threads() == 2
        gov.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pinned_or_single_threaded_runs_are_left_alone(monkeypatch):
    monkeypatch.setattr(threads, "other_runnable_threads", lambda: 5)
    gov = ThreadGovernor(1, interval=0.0)
    assert not gov.enabled
    gov.tick()
    assert torch.get_num_threads() == 1


def test_a_blip_at_the_start_does_not_decide(monkeypatch):
    # A start that sees another runnable thread takes the median of its samples: one sample
    # that sees a passing process, or misses a busy neighbour, does not decide; three that
    # agree end it; a first sample of 0 decides at once.
    for samples, expect in (([1, 0, 0, 0], 2), ([1, 1, 0, 1], 1), ([1, 1, 1], 1), ([0], 2)):
        seq = iter(samples)
        monkeypatch.setattr(threads, "other_runnable_threads", lambda: next(seq))
        monkeypatch.setattr(threads, "available_cpus", lambda: 2)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            ThreadGovernor(2, interval=0.0)
            assert torch.get_num_threads() == expect
            assert next(seq, None) is None          # every sample used, none more
        finally:
            torch.set_num_threads(before)
