"""Supervised training and prediction for the classifiers (used by pretrain and finetune).

Images stay as one float tensor on the device; minibatches are drawn with a
seeded `torch.Generator`, so a run is a pure function of its inputs and seed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from stages.runtime import open_live, progress

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class FitConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    backbone_lr_mult: float = 1.0  # lr multiplier for everything but `model.head`
    seed: int = 0
    log_every: int = 10


def _param_groups(model: nn.Module, cfg: FitConfig) -> list[dict]:
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": head, "lr": cfg.lr}]
    if cfg.backbone_lr_mult > 0:
        groups.append({"params": body, "lr": cfg.lr * cfg.backbone_lr_mult})
    else:
        for p in body:
            p.requires_grad_(False)
    return groups


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def fit(
    model: nn.Module,
    x: torch.Tensor,  # (N, C, H, W) float in [-1, 1]
    y: torch.Tensor,  # (N,) long
    cfg: FitConfig,
    device: torch.device,
    live_dir: Optional[str] = None,
    augment: Optional[Augment] = None,
    desc: str = "fit",
) -> dict:
    """Train `model` for `cfg.steps` AdamW steps with a cosine schedule; return a summary."""
    g = torch.Generator().manual_seed(cfg.seed)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    live = open_live(live_dir) if live_dir else None
    t0, loss_sum, n_loss, correct, seen = time.perf_counter(), 0.0, 0, 0, 0
    for step in progress(range(cfg.steps), desc=desc):
        for grp, lr in zip(opt.param_groups, base_lrs):
            grp["lr"] = lr * _cosine(step, cfg.steps)
        idx = torch.randint(len(y), (min(cfg.batch_size, len(y)),), generator=g).to(device)
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, g)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum, n_loss = loss_sum + loss.item(), n_loss + 1
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(yb)
        if live and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            live.log_metric("train/loss", loss_sum / n_loss)
            live.log_metric("train/acc", correct / max(seen, 1))
            live.next_step()
            loss_sum, n_loss, correct, seen = 0.0, 0, 0, 0
    if live:
        live.end()
    seconds = time.perf_counter() - t0
    return {"steps": cfg.steps, "seconds": round(seconds, 2), "images_per_s": round(cfg.steps * cfg.batch_size / max(seconds, 1e-9), 1)}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits (N, K) in eval mode, computed in batches."""
    model.to(device).eval()
    out = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Penultimate-layer features (N, F) in eval mode."""
    model.to(device).eval()
    out = [model.features(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)
