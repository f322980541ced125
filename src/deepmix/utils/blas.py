r"""Which library runs large float32 matrix products on the CPU: oneDNN where it is exact.

PyTorch sends a float32 ``mm`` / ``addmm`` on the CPU to MKL's ``sgemm``, except while
``torch.backends.mkldnn.matmul.fp32_precision`` is ``"bf16"``: then it calls oneDNN with
``fpmath_mode=bf16``, which *allows* oneDNN to round the inputs to bfloat16. oneDNN does so only
on CPUs with AMX; on the others (AVX-512, AVX2) it keeps float32 arithmetic with float32
accumulation, and its brgemm kernels run the tall, skinny products of EM much faster than
MKL: on the 2-core AVX-512 VM of the benchmarks, :math:`(60000 \times 1568)(1568 \times 25)`
takes 33 ms instead of 89 ms. Small products are slower there (~20 us of call overhead;
:math:`(100 \times 784)(784 \times 64)` ran at 0.96x), so only products of at least
:data:`MIN_WORK` multiply-adds take this route. (DCGMM's training steps, whose time goes to
its fused kernel and convolutions, gained nothing measurable and do not use it.)

:func:`fast_matmul` switches that route on around a block of large products, and only after
:func:`onednn_is_exact` has checked on this machine that the route rounds nothing: a product
whose exact float32 result bfloat16 inputs cannot give (:math:`(1 + 2^{-12})` summed 256 times)
and random products within float32 rounding of float64. Where the check fails (AMX), or
oneDNN is missing, or ``DEEPMIX_ONEDNN=0`` is set, the context does nothing: results never
lose precision, only the kernel changes (sums in another order: float32 rounding, not bits).

The switch is PyTorch's process-wide flag, restored on exit; products that other threads run
meanwhile take the same (exact) route.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["fast_matmul", "onednn_is_exact", "MIN_WORK"]

#: Multiply-adds below which a product stays with MKL: oneDNN's ~20 us of call overhead
#: outweighs its faster kernel there ((100 x 784)(784 x 64), 5e6, ran at 0.96x; 9e6 at 1.24x).
MIN_WORK = 1 << 23

_CHECKED: list[bool] = []


def _matmul_flags():
    return getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)


def onednn_is_exact() -> bool:
    """Whether oneDNN's float32 products, under ``fp32_precision="bf16"``, are float32-exact on
    this CPU (checked once per process; False where oneDNN or the flag is missing)."""
    if _CHECKED:
        return _CHECKED[0]
    ok = False
    flags = _matmul_flags()
    if (os.environ.get("DEEPMIX_ONEDNN", "1") != "0" and flags is not None
            and torch.backends.mkldnn.is_available()):
        old = flags.fp32_precision
        try:
            flags.fp32_precision = "bf16"
            a = torch.full((64, 256), 1.0 + 2.0 ** -12)
            exact = bool(((a @ torch.ones(256, 32)) == 256.0 * (1.0 + 2.0 ** -12)).all())
            g = torch.Generator().manual_seed(0)
            x, y = torch.randn(512, 300, generator=g), torch.randn(300, 40, generator=g)
            ref = x.double() @ y.double()
            err = float(((x @ y).double() - ref).abs().max() / ref.abs().max())
            ok = exact and err < 1e-5
        except (RuntimeError, AttributeError, TypeError, ValueError):
            ok = False
        finally:
            flags.fp32_precision = old
    _CHECKED.append(ok)
    return ok


@contextlib.contextmanager
def fast_matmul(work: int | None = None) -> Iterator[None]:
    """Run the float32 products of the block by oneDNN where :func:`onednn_is_exact`; else a
    no-op. ``work``, the multiply-adds of the block's typical product, keeps products below
    :data:`MIN_WORK` with MKL. Float64 products are unaffected (MKL either way)."""
    flags = _matmul_flags()
    if (flags is None or (work is not None and work < MIN_WORK) or not onednn_is_exact()
            or flags.fp32_precision == "bf16"):
        yield
        return
    old = flags.fp32_precision
    flags.fp32_precision = "bf16"
    try:
        yield
    finally:
        flags.fp32_precision = old
