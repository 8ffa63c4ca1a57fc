"""Training the `repair` kind's model: the restorer U-Net learns, on the source images only, to undo damage.

Every step draws a batch of source images and damages each with a corruption of
`corruptions` at a strength uniform in `strengths` (drawn from a generator
seeded by (seed, step), so a resumed run sees the same damage); G is trained on
L1(compose(damaged, known, G), clean): known pixels are kept, the rest is
completed. No adversarial term: the completions only have to stay faithful to
the class, and L1 alone keeps training cheap. Checkpoints and resumes bit-exactly
on CPU through `ganaug/train/checkpoint.py`, like the other loops.

`repair_checkpoint` is what `models/generators/repair.pt` holds (kind `repair`,
read by `ganaug/nets/repair.py`): the weights, the net's config, the class names
of the target whose shots it varies, the corruption list and the strengths.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ganaug.io.atomic import remove_stale_temporaries
from ganaug.io.data import to_float
from ganaug.nets import repair
from ganaug.nets.repair import KIND, Damage, apply_damage
from ganaug.nets.restorer import RestorerConfig, UNet, compose
from ganaug.restore import corruptions
from ganaug.train import checkpoint
from ganaug.train.runtime import progress


@dataclass
class RepairTrainConfig:
    corruptions: list[str]
    strengths: tuple[float, float]  # severity drawn uniformly in [lo, hi] per image
    width: int = 8  # the U-Net's first width
    steps: int = 150
    batch_size: int = 32
    lr: float = 2e-3
    checkpoint_every: int = 50
    seed: int = 0


def step_damage(clean: np.ndarray, cfg: RepairTrainConfig, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The step's damaged batch (N, C, S, S) and known mask (N, 1, S, S), seeded by (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step])
    n, (lo, hi) = len(clean), cfg.strengths
    d = Damage(rng.integers(len(cfg.corruptions), size=n), rng.uniform(lo, hi, size=n),
               rng.integers(repair.SEED_RANGE, size=n))
    return apply_damage(clean, cfg.corruptions, d)


def _fingerprint(g: UNet, cfg: RepairTrainConfig, clean: np.ndarray, device: torch.device) -> str:
    """What a run's result depends on: config, data, start, code, device."""
    conf = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    fp = checkpoint.Fingerprint(repr(sorted(conf.items())), device)
    fp.code([sys.modules[__name__], repair, corruptions, sys.modules[UNet.__module__]])
    for name, t in [("clean", clean), *g.state_dict().items()]:
        fp.tensor(name, t)
    return fp.hexdigest()


@dataclass
class _Run:
    """One training run's mutable state."""
    g: UNet
    opt: torch.optim.Optimizer
    pick: torch.Generator
    step: int = 0
    l1_sum: float = 0.0

    def state(self) -> dict:
        return {"step": self.step, "g": self.g.state_dict(), "opt": self.opt.state_dict(),
                "rng": self.pick.get_state(), "l1_sum": self.l1_sum}

    def restore(self, state: dict) -> None:
        self.g.load_state_dict(state["g"]), self.opt.load_state_dict(state["opt"])
        self.pick.set_state(state["rng"])
        self.step, self.l1_sum = int(state["step"]), float(state["l1_sum"])


def _train_step(run: _Run, clean: np.ndarray, cfg: RepairTrainConfig, device: torch.device) -> None:
    idx = torch.randint(len(clean), (min(cfg.batch_size, len(clean)),), generator=run.pick).numpy()
    damaged, known = step_damage(clean[idx], cfg, run.step)
    target = to_float(clean[idx]).to(device)  # (B, C, S, S)
    xd, k = to_float(damaged).to(device), torch.from_numpy(known).float().to(device)  # (B, C, S, S), (B, 1, S, S)
    l1 = (compose(xd, k, run.g(xd, k)) - target).abs().mean()
    run.opt.zero_grad(set_to_none=True)
    l1.backward()
    run.opt.step()
    run.step += 1
    run.l1_sum += l1.item()


def train_repair(clean: np.ndarray, cfg: RepairTrainConfig, device: torch.device, ckpt_path: Optional[Path] = None,
                 stop_after: Optional[int] = None) -> tuple[UNet, dict]:
    """Train the repair model on uint8 source images `clean` (N, C, S, S); (G, summary). `stop_after`: stop there."""
    torch.manual_seed(cfg.seed)
    g = UNet(RestorerConfig(clean.shape[1], clean.shape[2], cfg.width))
    fp = _fingerprint(g, cfg, clean, device) if ckpt_path is not None else ""
    g.to(device).train()
    run = _Run(g, torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.999)), torch.Generator().manual_seed(cfg.seed))
    state = checkpoint.load(ckpt_path, fp, KIND)
    if state is not None:
        run.restore(state)
    start, end = run.step, cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    t0 = time.perf_counter()
    for _ in progress(range(start, end), desc=KIND, initial=start, total=cfg.steps):
        _train_step(run, clean, cfg, device)
        if ckpt_path is not None and run.step % cfg.checkpoint_every == 0 and run.step < cfg.steps:
            checkpoint.save(ckpt_path, run.state(), fp)
    summary = {"steps": cfg.steps, "resumed_from": start, "seconds": round(time.perf_counter() - t0, 2),
               "mean_l1": round(run.l1_sum / max(end, 1), 5)}
    if end < cfg.steps:
        return g.cpu(), {**summary, "stopped": True}
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
        remove_stale_temporaries(ckpt_path)
    return g.cpu().eval(), summary


def repair_checkpoint(g: UNet, cfg: RepairTrainConfig, class_names: list[str]) -> dict:
    """The `repair` generator checkpoint (plain tensors and containers: loads with weights_only=True)."""
    return {"kind": KIND, "config": asdict(g.cfg), "weights": g.state_dict(), "class_names": list(class_names),
            "corruptions": list(cfg.corruptions), "strengths": [float(s) for s in cfg.strengths],
            "train": {k: v for k, v in asdict(cfg).items() if k not in ("corruptions", "strengths")}}
