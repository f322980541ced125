"""utils.memory: the allocator policy the loop and the CLI set once per process."""

import subprocess
import sys

import pytest

CODE = """
import torch
from deepmix.utils import memory
a = memory.tune_allocator()
assert memory.tune_allocator() == a            # once per process, same answer
x = torch.ones(3 << 20)                        # 12 MB: a step-sized tensor
del x
y = torch.zeros(3 << 20)                       # must come back zeroed from a reused block
assert float(y.abs().sum()) == 0.0
print(a)
"""


def _run(env_extra: dict) -> str:
    import os

    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_is_set_once_and_can_be_turned_off():
    assert _run({}) in ("True", "False")         # False only off glibc (e.g. musl)
    assert _run({"DEEPMIX_MALLOC": "system"}) == "False"
