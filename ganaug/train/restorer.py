"""Training the restorer (`ganaug/nets/restorer.py`): learn to undo a corruption, then adapt to the target.

Every step draws a batch of clean images, damages it with the corruption spec
(`ganaug/restore/corruptions.py`, seeded by (seed, step), so a resumed run sees
the same damage), and trains G on L1(compose(damaged, known, G), clean) plus
`adv_weight` x a hinge adversarial term from a patch discriminator (pix2pix /
context-encoder style). A fraction `clean_fraction` of each batch is left
undamaged (with no pixel marked known), so G learns to leave clean images alone.

`meta_restorer` (`restore.init: meta`) learns the start instead with Reptile, as
`gan.init: meta` does for the GAN: each episode trains a copy for a few steps on
the images of a random half of the source classes, and the start moves toward
it by a step annealed linearly to 0.

`weight` (N, 1, H, W) marks which target pixels are trusted: adapting on shots
that are themselves damaged trains on their known pixels only, without the
adversarial term (D would learn the damage as real). Checkpoints and resumes
bit-exactly on CPU through `ganaug/train/checkpoint.py`, like the other loops.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ganaug.io.atomic import remove_stale_temporaries
from ganaug.io.data import to_float, to_uint8
from ganaug.nets.restorer import PatchDiscriminator, RestorerConfig, UNet, compose
from ganaug.restore import corruptions
from ganaug.restore.corruptions import corrupt
from ganaug.train import checkpoint
from ganaug.train.reptile import outer_step, reptile_update
from ganaug.train.runtime import progress


@dataclass
class RestoreTrainConfig:
    steps: int
    width: int = 16  # the U-Net's first width (a new restorer only; an adapted one keeps its own)
    batch_size: int = 64
    lr: float = 1e-3
    adv_weight: float = 0.01
    clean_fraction: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250


def _damage(clean: np.ndarray, spec: str, seed: int, step: int, clean_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The step's damaged batch and known mask; a `clean_fraction` of the images left clean, no pixel known."""
    rng_seed = int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
    damaged, known = corrupt(clean, spec, rng_seed)
    keep = np.random.default_rng(rng_seed).random(len(clean)) < clean_fraction
    damaged[keep], known[keep] = clean[keep], False
    return damaged, known


def _fingerprint(g: UNet, spec: str, cfg: RestoreTrainConfig, device: torch.device,
                 data: dict[str, Optional[np.ndarray]]) -> str:
    """What a run's result depends on: config, corruption, its data arrays (None ones skipped), start, code, device."""
    conf = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    fp = checkpoint.Fingerprint(repr(sorted(conf.items())) + spec, device)
    fp.code([sys.modules[__name__], corruptions, sys.modules[UNet.__module__]])
    for name, t in [*((k, v) for k, v in data.items() if v is not None), *g.state_dict().items()]:
        fp.tensor(name, t)
    return fp.hexdigest()


def train_restorer(clean: np.ndarray, spec: str, cfg: RestoreTrainConfig, device: torch.device,
                   g: Optional[UNet] = None, weight: Optional[np.ndarray] = None,
                   ckpt_path: Optional[Path] = None, desc: str = "restore", stop_after: Optional[int] = None) -> tuple[UNet, dict]:
    """Train (or, given `g`, adapt) a restorer on uint8 images `clean` (N, C, H, W) to undo `spec`; (G, summary)."""
    torch.manual_seed(cfg.seed)
    g = g if g is not None else UNet(RestorerConfig(clean.shape[1], clean.shape[2], cfg.width))
    d = PatchDiscriminator(g.cfg)
    adv = cfg.adv_weight if weight is None else 0.0
    fp = _fingerprint(g, spec, cfg, device, {"clean": clean, "weight": weight}) if ckpt_path is not None else ""
    g.to(device).train(), d.to(device).train()
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    pick = torch.Generator().manual_seed(cfg.seed)
    w_all = torch.from_numpy(weight.astype(np.float32)) if weight is not None else None
    start, sums = 0, {"l1": 0.0, "adv": 0.0}
    state = checkpoint.load(ckpt_path, fp, desc)
    if state is not None:
        g.load_state_dict(state["g"]), d.load_state_dict(state["d"])
        opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
        pick.set_state(state["rng"])
        start, sums = int(state["step"]), dict(state["sums"])
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    t0 = time.perf_counter()
    for step in progress(range(start, end), desc=desc, initial=start, total=cfg.steps):
        idx = torch.randint(len(clean), (min(cfg.batch_size, len(clean)),), generator=pick).numpy()
        damaged, known = _damage(clean[idx], spec, cfg.seed, step, cfg.clean_fraction)
        target = to_float(clean[idx]).to(device)  # (B, C, H, W)
        xd, k = to_float(damaged).to(device), torch.from_numpy(known).float().to(device)  # (B, C, H, W), (B, 1, H, W)
        out = compose(xd, k, g(xd, k))
        if adv > 0:
            loss_d = F.relu(1 - d(target)).mean() + F.relu(1 + d(out.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        err = (out - target).abs()
        if w_all is not None:
            w = w_all[idx].to(device)
            err = err * w / w.mean().clamp_min(1e-8)
        l1 = err.mean()
        g_adv = -d(out).mean() if adv > 0 else torch.zeros((), device=device)
        opt_g.zero_grad(set_to_none=True)
        (l1 + adv * g_adv).backward()
        opt_g.step()
        sums["l1"] += l1.item()
        sums["adv"] += g_adv.item()
        if ckpt_path is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint.save(ckpt_path, {"step": step + 1, "g": g.state_dict(), "d": d.state_dict(),
                                        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                                        "rng": pick.get_state(), "sums": sums}, fp)
    seconds = time.perf_counter() - t0
    summary = {"steps": cfg.steps, "resumed_from": start, "seconds": round(seconds, 2),
               "mean_l1": round(sums["l1"] / max(end, 1), 5), "adversarial": adv > 0}
    if end < cfg.steps:
        return g.cpu(), {**summary, "stopped": True}
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
        remove_stale_temporaries(ckpt_path)
    return g.cpu().eval(), summary


@torch.no_grad()
def restore_images(g: UNet, damaged: np.ndarray, known: np.ndarray, device: torch.device,
                   batch_size: int = 256) -> np.ndarray:
    """Restored uint8 images (N, C, H, W); known pixels come back unchanged."""
    g.to(device).eval()
    out = []
    for i in range(0, len(damaged), batch_size):
        xd = to_float(damaged[i:i + batch_size]).to(device)
        k = torch.from_numpy(known[i:i + batch_size]).float().to(device)
        out.append(to_uint8(compose(xd, k, g(xd, k))))
    g.cpu()
    return np.concatenate(out) if out else damaged.copy()


def meta_restorer(x: np.ndarray, y: np.ndarray, spec: str, cfg: RestoreTrainConfig, episodes: int, inner_steps: int,
                  outer_lr: float, task_images: int, device: torch.device, ckpt_path: Optional[Path] = None,
                  stop_after: Optional[int] = None) -> tuple[UNet, dict]:
    """A restorer start meta-learned with Reptile over `episodes` tasks drawn from the source images `x` (labels `y`)."""
    torch.manual_seed(cfg.seed)
    g = UNet(RestorerConfig(x.shape[1], x.shape[2], cfg.width))
    meta = {k: v.clone() for k, v in g.state_dict().items()}
    fp = ""
    if ckpt_path is not None:
        fp = _fingerprint(g, f"{spec}|meta|{episodes}|{inner_steps}|{outer_lr}|{task_images}", cfg, device,
                          {"x": x, "y": y.astype(np.int64)})
    start, state = 0, checkpoint.load(ckpt_path, fp, "restore meta")
    if state is not None:
        meta, start = state["meta"], int(state["episode"])
    classes = np.unique(y)
    end = episodes if stop_after is None else min(stop_after, episodes)
    t0 = time.perf_counter()
    for ep in progress(range(start, end), desc="restore meta", initial=start, total=episodes):
        rng = np.random.default_rng([cfg.seed, ep])
        pool = np.flatnonzero(np.isin(y, rng.choice(classes, max(1, len(classes) // 2), replace=False)))
        task = x[rng.choice(pool, min(task_images, len(pool)), replace=False)]
        inner = UNet(g.cfg)
        inner.load_state_dict(meta)
        inner, _ = train_restorer(task, spec, replace(cfg, steps=inner_steps, seed=cfg.seed * 1_000_003 + ep), device, g=inner)
        reptile_update(meta, inner.state_dict(), outer_step(ep, episodes, outer_lr))
        if ckpt_path is not None and (ep + 1) % cfg.checkpoint_every == 0 and ep + 1 < episodes:
            checkpoint.save(ckpt_path, {"meta": meta, "episode": ep + 1}, fp)
    summary = {"init": "meta", "episodes": episodes, "inner_steps": inner_steps, "resumed_from": start,
               "seconds": round(time.perf_counter() - t0, 2)}
    if end < episodes:
        return g, {**summary, "stopped": True}
    if ckpt_path is not None:
        Path(ckpt_path).unlink(missing_ok=True)
        remove_stale_temporaries(ckpt_path)
    g.load_state_dict(meta)
    return g.eval(), summary
