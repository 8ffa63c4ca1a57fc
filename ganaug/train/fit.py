"""Supervised training and prediction for the classifiers (used by pretrain and finetune).

Images stay as one float tensor on the device; minibatches are drawn with a
seeded `torch.Generator`, so a run is a pure function of its inputs and seed.

Resumable: given `ckpt_path`, `fit` writes the whole training state (model,
optimiser, the torch.Generator, the global torch RNG, the step and the running
log statistics) there every `cfg.checkpoint_every` steps, atomically, through
`ganaug/train/checkpoint.py` (the GAN trainer uses the same module). A later
call with the same config, data, stream, starting weights, training code and
device type (their fingerprint is stored in the checkpoint) resumes from it, and ends with weights bit-identical
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

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganaug.io.atomic import remove_stale_temporaries
from ganaug.train import checkpoint, streams
from ganaug.train.runtime import open_live, progress
from ganaug.train.streams import Stream, bn_eval, schedule_phase, stream_loss

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
    # the second stream (`ganaug/train/streams.py`; only when fit() gets a `stream`)
    stream_batch: int = 32  # stream images per step, besides `batch_size` real ones
    stream_weight: float = 1.0  # weight of the stream's loss (0: the real-only run, bit for bit)
    hard_weight: float = 0.0  # weight of the hard labels in the stream's loss (0: distillation only)
    schedule: str = "joint"  # joint | synthetic_first (finetune.schedule)
    first_fraction: float = 0.5  # schedule synthetic_first: this fraction of the steps on the stream alone
    bn: str = "real"  # finetune.bn: real (stream batches use BN in eval mode) | frozen (always eval) | joint


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

def _describe_augment(augment: Optional[Augment]) -> str:
    return f"{getattr(augment, '__module__', '')}.{getattr(augment, '__qualname__', augment)}"


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FitConfig, device: torch.device,
                augment: Optional[Augment], stream: Optional[Stream] = None,
                stream_augment: Optional[Augment] = None) -> str:
    """What a run's result depends on (`checkpoint.Fingerprint`): config, data, stream, starting weights,
    augmentations, the training code and the device type."""
    conf = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    fp = checkpoint.Fingerprint(repr(sorted(conf.items())), device)
    fp.text(f"{_describe_augment(augment)}|{_describe_augment(stream_augment)}")
    fp.code([sys.modules[__name__], streams, sys.modules[type(model).__module__]])
    tensors = [("x", x), ("y", y), *model.state_dict().items()]
    if stream is not None:
        tensors += [("stream_x", stream.x), ("stream_soft", stream.soft), ("stream_hard", stream.hard)]
        fp.text(f"T={stream.temperature}")
    for name, t in tensors:
        fp.tensor(name, t)
    fp.text("".join("1" if p.requires_grad else "0" for p in model.parameters()))  # backbone_lr_mult=0 freezes the body
    return fp.hexdigest()


@dataclass
class _Batches:
    """What one step trains on: a real batch and/or a stream batch (None where the schedule leaves one out)."""

    xb: Optional[torch.Tensor] = None  # (B, C, H, W) real images
    yb: Optional[torch.Tensor] = None  # (B,) their labels, or (B, K) probabilities after a label-mixing augment
    xs: Optional[torch.Tensor] = None  # (S, C, H, W) stream images
    soft: Optional[torch.Tensor] = None  # (S, K) their teacher probabilities
    hard: Optional[torch.Tensor] = None  # (S,) their hard labels (-1: none)


def _draw(step: int, x: torch.Tensor, y: torch.Tensor, stream: Optional[Stream], cfg: FitConfig,
          g: torch.Generator, gs: torch.Generator, augment: Optional[Augment],
          stream_augment: Optional[Augment]) -> _Batches:
    """The step's batches. Real and stream draws use their own generators, so the real batches of a run
    with a stream are those of the same run without one."""
    phase = schedule_phase(step, cfg.steps, cfg.schedule, cfg.first_fraction) if stream is not None else "real"
    b = _Batches()
    if phase != "stream":
        idx = torch.randint(len(y), (min(cfg.batch_size, len(y)),), generator=g).to(x.device)
        b.xb, b.yb = x[idx], y[idx]
        if getattr(augment, "mixes_labels", False):
            b.xb, b.yb = augment.mix(b.xb, b.yb, g)  # yb: (B, K) mixed probabilities
        elif augment is not None:
            b.xb = augment(b.xb, g)
    if stream is not None and phase != "real":
        j = torch.randint(len(stream), (min(cfg.stream_batch, len(stream)),), generator=gs).to(x.device)
        b.xs, b.soft, b.hard = stream.x[j], stream.soft[j], stream.hard[j]
        if stream_augment is not None:
            b.xs = stream_augment(b.xs, gs)
    return b


def _forward(model: nn.Module, b: _Batches, bn: str) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Logits of the real and the stream batch. BatchNorm: `joint` normalises both batches together; `real`
    runs the stream batch with BN in eval mode (statistics from real batches only); `frozen` uses the
    running statistics for both."""
    if bn == "joint" and b.xb is not None and b.xs is not None:
        logits = model(torch.cat([b.xb, b.xs]))  # (B + S, K)
        return logits[: len(b.xb)], logits[len(b.xb):]
    real = stream = None
    if b.xb is not None:
        with bn_eval(model, active=bn == "frozen"):
            real = model(b.xb)  # (B, K)
    if b.xs is not None:
        with bn_eval(model, active=bn in ("real", "frozen")):
            stream = model(b.xs)  # (S, K)
    return real, stream


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
    stream: Optional[Stream] = None,
    stream_augment: Optional[Augment] = None,
) -> dict:
    """Train `model` for `cfg.steps` AdamW steps with a cosine schedule; return a summary.

    With `stream` (`ganaug/train/streams.py`), every step also draws `cfg.stream_batch`
    stream images and adds `cfg.stream_weight` x their loss (`stream_loss`); with a weight of 0
    the stream is not used, so the result is the run without it, bit for bit, under every `bn`.
    With `ckpt_path`, checkpoint every `cfg.checkpoint_every` steps and resume
    from a matching checkpoint there. `stop_after` (for tests) returns after that
    many steps in total as if the process had been killed: the last checkpoint
    stays and the summary says `"stopped": True`.
    """
    ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
    if stream is not None and cfg.stream_weight == 0:
        stream = None  # a stream of weight 0 is not drawn at all: no loss, no BatchNorm statistics (bn: joint)
    fp = fingerprint(model, x, y, cfg, device, augment, stream, stream_augment) if ckpt_path is not None else ""
    g = torch.Generator().manual_seed(cfg.seed)
    gs = torch.Generator().manual_seed(cfg.seed + 1)  # the stream's draws and augmentation
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    if stream is not None:
        stream = Stream(stream.x.to(device), stream.soft.to(device), stream.hard.to(device), stream.temperature)
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    log = {"loss_sum": 0.0, "n_loss": 0, "correct": 0, "seen": 0, "stream_sum": 0.0}
    start, live_step = 0, 0
    state = checkpoint.load(ckpt_path, fp, "fit")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"])
        gs.set_state(state["stream_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start, live_step, log = int(state["step"]), int(state["live_step"]), dict(state["log"])
    live = open_live(live_dir) if live_dir else None
    if live:
        live.step = live_step  # curves of a resumed run hold the steps from the resume point on
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    t0 = time.perf_counter()
    for step in progress(range(start, end), desc=desc, initial=start, total=cfg.steps):
        for grp, lr in zip(opt.param_groups, base_lrs):
            grp["lr"] = lr * _cosine(step, cfg.steps)
        b = _draw(step, x, y, stream, cfg, g, gs, augment, stream_augment)
        logits, stream_logits = _forward(model, b, cfg.bn)
        loss = F.cross_entropy(logits, b.yb) if logits is not None else torch.zeros((), device=device)
        if stream_logits is not None:
            s_loss = stream_loss(stream_logits, b.soft, b.hard, stream.temperature, cfg.hard_weight)
            loss = loss + cfg.stream_weight * s_loss
            log["stream_sum"] += s_loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log["loss_sum"] += loss.item()
        log["n_loss"] += 1
        if logits is not None:
            log["correct"] += (logits.argmax(1) == (b.yb.argmax(1) if b.yb.ndim == 2 else b.yb)).sum().item()
            log["seen"] += len(b.yb)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            if live:
                live.log_metric("train/loss", log["loss_sum"] / log["n_loss"])
                live.log_metric("train/acc", log["correct"] / max(log["seen"], 1))
                if stream is not None:
                    live.log_metric("train/stream_loss", log["stream_sum"] / log["n_loss"])
                live.next_step()
            live_step += 1
            log = {"loss_sum": 0.0, "n_loss": 0, "correct": 0, "seen": 0, "stream_sum": 0.0}
        if ckpt_path is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint.save(ckpt_path, {
                "step": step + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                "rng": g.get_state(), "stream_rng": gs.get_state(), "torch_rng": torch.get_rng_state(),
                "live_step": live_step, "log": log,
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            }, fp)
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
