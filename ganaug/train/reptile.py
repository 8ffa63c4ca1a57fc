"""Reptile's outer update (Nichol et al. 2018), shared by the meta-learned GAN and restorer starts.

After each episode's inner loop the meta weights move a step toward the adapted
weights, with a step size that decays linearly to 0 over the episodes.
"""
from __future__ import annotations

from typing import Callable

import torch


def outer_step(episode: int, episodes: int, outer_lr: float) -> float:
    """The step size of `episode` (0-based): outer_lr * (1 - episode / episodes)."""
    return outer_lr * (1.0 - episode / episodes)


@torch.no_grad()
def reptile_update(meta: dict[str, torch.Tensor], adapted: dict[str, torch.Tensor], eps: float,
                   skip: Callable[[str], bool] = lambda key: False) -> None:
    """meta <- meta + eps * (adapted - meta), in place, for the float tensors whose key `skip` does not name;
    other tensors (e.g. BatchNorm's step counter) are copied from `adapted`."""
    for k, v in meta.items():
        if skip(k):
            continue
        if v.is_floating_point():
            v.add_(adapted[k].to(v.device, v.dtype) - v, alpha=eps)
        else:
            v.copy_(adapted[k])
