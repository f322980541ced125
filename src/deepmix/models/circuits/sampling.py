r"""Top-down passes through an EinsumNetwork: ancestral, conditional and MPE draws.

One pass from the root to the leaves chooses, at every sum, one child per sample:

- einsum of partition (a, b) with output c: the pair (i, j) with probability
  :math:`\propto W_{ijc}`, or with evidence (conditional sampling)
  :math:`\propto W_{ijc}\, a_i(x_o)\, b_j(x_o)`, the children's marginal likelihoods of the
  observed entries :math:`x_o`;
- mixing of a region with output c: partition p with probability :math:`\propto V_{cp}`
  (times :math:`o^{(p)}_c(x_o)` with evidence).

Choices are Gumbel-max draws, :math:`\arg\max_k (\log \pi_k - \log(-\log u_k))`, or plain argmax
for the MPE approximation. Every variable then has exactly one active leaf factor, which the leaf
layer samples or sets to its mode (:meth:`.leaves.Leaves.draw`); with evidence the observed
entries are kept, so ``condition=(x, mask)`` draws :math:`x_m \sim p(x_m \mid x_o)` exactly.
Random numbers come from the generator's device (a CPU generator, the default, gives the same
draws on every device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .network import EinsumNetwork

__all__ = ["draw"]


@torch.no_grad()
def draw(net: "EinsumNetwork", n: int, x: torch.Tensor | None, mask: torch.Tensor | None, mode: str,
         generator: torch.Generator | None) -> torch.Tensor:
    """``n`` top-down draws from ``net``: ``mode`` "sample" (ancestral, or posterior given
    ``x`` (N, D, C) with ``mask`` (N, D) True = observed) or "mpe" (argmax at every sum, leaves
    at their modes). Returns (n, D), or (n, D, C) with ``num_dims`` C > 1."""
    dev, dt = net._ref.device, net._ref.dtype
    # Draws happen where the generator lives: a CPU generator (the default) gives the same
    # samples on every device, a generator on the model's device avoids the copies.
    gdev = generator.device if generator is not None else torch.device("cpu")
    weights = net._weights()
    kept = None
    if x is not None:
        kept = net._inner(net._leaf_regions(x, mask), weights, keep=True)[1]

    def choose(logits: torch.Tensor) -> torch.Tensor:
        if mode == "sample":
            u = torch.rand(logits.shape, generator=generator, dtype=torch.float64,
                           device=gdev).to(dev)
            logits = logits - torch.log(-torch.log(u.clamp_min(1e-300))).to(logits.dtype)  # Gumbel-max
        return logits.argmax(-1)

    sizes = {net._leaf_k: net._n_leaf_regions}
    for layer in net.layers:
        for ko, slots in layer.out_slots.items():
            sizes[ko] = sizes.get(ko, 0) + len(slots)
    choice = {k: torch.full((n, c), -1, dtype=torch.long, device=dev) for k, c in sizes.items()}
    choice[net._root_k][:, net._root_slot] = 0
    for li in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[li]
        pchoice = {ko: torch.full((n, c), -1, dtype=torch.long, device=dev)
                   for ko, c in layer.n_parts.items()}
        for ko, slots in layer.out_slots.items():
            n_single = len(layer.single[ko])
            pchoice[ko][:, layer.single[ko]] = choice[ko][:, slots[:n_single]]
            if ko in layer.mixing:
                m = layer.mixing[ko]
                o = choice[ko][:, slots[n_single:]]                                  # (n, M)
                oc = o.clamp_min(0)
                w = weights[m.param].permute(0, 2, 1)                                # (M, Ko, Cmax)
                logits = w[torch.arange(len(m.index), device=dev), oc].log()         # (n, M, Cmax)
                if kept is not None:
                    vals = kept["parts"][li][ko][:, m.index]                         # (n, M, Cmax, Ko)
                    logits = logits + vals.gather(3, oc[:, :, None, None].expand(*vals.shape[:3], 1))[..., 0]
                c = choose(logits)
                part = m.index[torch.arange(len(m.index), device=dev), c]            # (n, M)
                pchoice[ko].scatter_(1, part, o)
        for g in layer.groups:
            o = pchoice[g.k_out][:, g.part_pos]                                      # (n, P)
            active = o >= 0
            w = weights[g.param].permute(0, 2, 1)                                    # (P, Ko, KiKj)
            logits = w[torch.arange(len(g.left), device=dev), o.clamp_min(0)].log()  # (n, P, KiKj)
            if kept is not None:
                a = kept["store"][g.k_left][:, g.left]
                b = kept["store"][g.k_right][:, g.right]
                logits = logits + (a[..., :, None] + b[..., None, :]).flatten(2)
            ij = choose(logits)
            i, j = ij // g.k_right, ij % g.k_right
            minus = torch.full_like(i, -1)
            choice[g.k_left].scatter_reduce_(1, g.left.expand(n, -1), torch.where(active, i, minus), "amax")
            choice[g.k_right].scatter_reduce_(1, g.right.expand(n, -1), torch.where(active, j, minus), "amax")
    k = choice[net._leaf_k][:, net._leaf_slot]                                     # (n, pairs)
    active = k >= 0
    mu = net.leaves.draw(net._leaf_params(), net._leaf_var, net._leaf_rep, k.clamp_min(0),
                         mode, generator)                                        # (n, pairs, C)
    out = torch.zeros(n, net.num_var, net.num_dims, dtype=dt, device=dev)
    out.index_add_(1, net._leaf_var, mu * active[..., None].to(dt))  # exactly one active factor per variable
    if x is not None and mask is not None:
        out = torch.where(mask[..., None], x, out)
    return out.reshape(n, -1) if net.num_dims == 1 else out

