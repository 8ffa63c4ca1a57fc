"""Supervised training and prediction for the classifiers (used by pretrain and finetune).

Images stay as one float tensor on the device; minibatches are drawn with a
seeded `torch.Generator`, so a run is a pure function of its inputs and seed.

Resumable: given `ckpt_path`, `fit` writes the whole training state (model,
optimiser, the torch.Generator, the global torch RNG, the step and the running
log statistics) there every `cfg.checkpoint_every` steps, atomically. A later
call with the same config, data and starting weights (their fingerprint is
stored in the checkpoint) resumes from it, and ends with weights bit-identical
(on CPU) to an uninterrupted run. The checkpoint is deleted when training ends.
The dvclive curves of a resumed run start at the resume point.

On a GPU a run is reproducible only up to floating-point noise: cuDNN picks
convolution algorithms per run and several CUDA backward kernels (index
gathers, upsampling, embedding) accumulate with atomics in no fixed order, so
two runs (or a resumed and an uninterrupted one) can differ in the last bits
and drift apart over many steps (the minibatch draws come from the CPU
generator and still match; the CUDA RNG state is checkpointed too). For bitwise equality on CUDA one would need
`torch.use_deterministic_algorithms(True)`, `torch.backends.cudnn.benchmark =
False` and `CUBLAS_WORKSPACE_CONFIG=:4096:8`, at some cost in speed.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from stages.atomic import atomic_file, remove_stale_temporaries
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
    checkpoint_every: int = 100  # steps between checkpoints (only when fit() gets a ckpt_path)


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


# ---------------------------------------------------------------- checkpoints

def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FitConfig, device: torch.device,
                augment: Optional[Augment]) -> str:
    """sha256 of what a run's result depends on: config, data, starting weights, augmentation, device type."""
    h = hashlib.sha256()
    conf = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    h.update(repr(sorted(conf.items())).encode())
    h.update(f"{device.type}|{getattr(augment, '__module__', '')}.{getattr(augment, '__qualname__', augment)}".encode())
    for name, t in [("x", x), ("y", y), *model.state_dict().items()]:
        arr = t.detach().cpu().contiguous()
        h.update(f"{name}|{arr.dtype}|{tuple(arr.shape)}|".encode())
        h.update(arr.view(-1).view(torch.uint8).numpy().tobytes() if arr.numel() else b"")
    for p in model.parameters():  # which parameters train (backbone_lr_mult=0 freezes the body)
        h.update(b"1" if p.requires_grad else b"0")
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` atomically (temporary file, then rename)."""
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Optional[Path], fp: str) -> Optional[dict]:
    """The checkpoint at `path` if there is one for this run (same fingerprint), else None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as exc:
        print(f"fit: ignoring unreadable checkpoint {path} ({exc.__class__.__name__}: {exc})")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fp:
        print(f"fit: ignoring checkpoint {path}: made for another config, data or starting model")
        return None
    return state


def fit(
    model: nn.Module,
    x: torch.Tensor,  # (N, C, H, W) float in [-1, 1]
    y: torch.Tensor,  # (N,) long
    cfg: FitConfig,
    device: torch.device,
    live_dir: Optional[str] = None,
    augment: Optional[Augment] = None,
    desc: str = "fit",
    ckpt_path: Optional[Path] = None,
    stop_after: Optional[int] = None,
) -> dict:
    """Train `model` for `cfg.steps` AdamW steps with a cosine schedule; return a summary.

    With `ckpt_path`, checkpoint every `cfg.checkpoint_every` steps and resume
    from a matching checkpoint there. `stop_after` (for tests) returns after that
    many steps in total as if the process had been killed: the last checkpoint
    stays and the summary says `"stopped": True`.
    """
    ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
    fp = fingerprint(model, x, y, cfg, device, augment) if ckpt_path is not None else ""
    g = torch.Generator().manual_seed(cfg.seed)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    loss_sum, n_loss, correct, seen, start, live_step = 0.0, 0, 0, 0, 0, 0
    state = load_checkpoint(ckpt_path, fp)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start, live_step = int(state["step"]), int(state["live_step"])
        loss_sum, n_loss, correct, seen = float(state["loss_sum"]), int(state["n_loss"]), int(state["correct"]), int(state["seen"])
    live = open_live(live_dir) if live_dir else None
    if live:
        live.step = live_step  # curves of a resumed run hold the steps from the resume point on
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    t0 = time.perf_counter()
    for step in progress(range(start, end), desc=desc, initial=start, total=cfg.steps):
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
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            if live:
                live.log_metric("train/loss", loss_sum / n_loss)
                live.log_metric("train/acc", correct / max(seen, 1))
                live.next_step()
            live_step += 1
            loss_sum, n_loss, correct, seen = 0.0, 0, 0, 0
        if ckpt_path is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(ckpt_path, {
                "fingerprint": fp, "step": step + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                "rng": g.get_state(), "torch_rng": torch.get_rng_state(), "live_step": live_step,
                "loss_sum": loss_sum, "n_loss": n_loss, "correct": correct, "seen": seen,
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            })
    if live:
        live.end()
    seconds = time.perf_counter() - t0
    done = end - start
    summary = {"steps": cfg.steps, "resumed_from": start, "seconds": round(seconds, 2),
               "images_per_s": round(done * cfg.batch_size / max(seconds, 1e-9), 1)}
    if end < cfg.steps:
        return {**summary, "stopped": True}
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
        remove_stale_temporaries(ckpt_path)  # a run killed while writing a checkpoint left one
    return summary


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
