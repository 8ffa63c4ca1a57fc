"""Meta-learning the GAN's start across source tasks with Reptile (`gan.init: meta`; the stage meta_gan).

As FIGR (Clouatre and Demers 2019) does for GANs: an episode is a few-shot task
drawn from the source classes, shaped like the target task (`ways` classes,
`shots` images each). The inner loop trains G and D on it for `inner_steps`
steps (`GanTrainer`, the target's own trainer, with the class embeddings freshly
initialised); the outer loop moves the shared weights toward the result,
theta <- theta + eps * (theta' - theta), eps annealed linearly from `outer_lr`
to 0 (Nichol et al. 2018). The class-specific weights are never meta-learned:
every task, and the target, starts them afresh.

Then, learned rather than hand-set (`meta_validate`): on tasks from source
classes never used for meta-training, the meta-learned start is adapted with
every learning rate x decay gamma of the grid (lr_t = lr_0 exp(-gamma t)), and
KID in the source classifier's feature space between the EMA generator's samples
and the tasks' other images is read at every candidate number of steps. The
best (lr, gamma, steps) is recorded; `train_gan` adapts with it to the target.

Resumable: the meta-weights, the episode and the summed statistics are
checkpointed every `checkpoint_every` episodes (`ganaug/train/checkpoint.py`);
every episode's draws come from (seed, episode), so a resumed run ends with
bit-identical weights on CPU.
"""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ganaug.config.errors import DataError
from ganaug.config.params import DataParams, GanParams, MetaParams
from ganaug.io.atomic import remove_stale_temporaries
from ganaug.io.data import ImageSet, to_float
from ganaug.judge.feature_metrics import kid
from ganaug.nets import gan as gan_model
from ganaug.nets.gan import GanConfig, build_discriminator, build_generator, sample
from ganaug.train import checkpoint
from ganaug.train.gan import CLASS_SPECIFIC, BalancedBatches, GanTrainConfig, GanTrainer
from ganaug.train.reptile import outer_step, reptile_update
from ganaug.train.runtime import progress, seed_everything

KID_REFERENCE_PER_CLASS = 100  # meta-validation's KID reference (and its samples) per class: Fashion-MNIST has 6,000

Features = Callable[[torch.Tensor], np.ndarray]  # images (N, C, S, S) in [-1, 1] -> features (N, F)


@dataclass
class Task:
    shots: ImageSet  # ways x shots images, labels 0..ways-1
    rest: ImageSet  # the other images of the same classes (meta-validation's reference)


def episode_shape(data: DataParams, m: MetaParams, n_source_classes: int, n_target_classes: int) -> tuple[int, int]:
    """(ways, shots) of an episode: `meta.ways` / `meta.shots` when set, else the target task's shots and as many
    of its classes as the source can give while keeping meta-validation classes apart (class embeddings start
    afresh on the target, so episodes may have fewer classes than it: 5 source classes give 2-way episodes)."""
    shots = m.shots or data.shots
    if m.ways:
        return m.ways, shots
    fitting = [w for w in range(1, n_target_classes + 1) if n_source_classes - _n_val(n_source_classes, m, w) >= w]
    return (max(fitting) if fitting else n_target_classes), shots


def _n_val(k: int, m: MetaParams, ways: int) -> int:
    return max(ways, int(round(k * m.val_fraction)))


def split_classes(source: ImageSet, m: MetaParams, ways: int) -> tuple[np.ndarray, np.ndarray]:
    """(meta-training classes, meta-validation classes): a seeded `val_fraction` of the source classes held out."""
    k = len(source.class_names)
    n_val = _n_val(k, m, ways)
    if k - n_val < ways:
        raise DataError(f"meta: the source has {k} classes; {ways}-way episodes need at least {2 * ways} "
                        f"(meta-training and meta-validation classes apart): lower meta.ways (class embeddings start "
                        f"afresh on the target, so tasks may have fewer classes than it) or use a source with more "
                        f"classes, e.g. omniglot_source.npz")
    perm = np.random.default_rng([m.seed, 7]).permutation(k)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def draw_task(source: ImageSet, classes: np.ndarray, ways: int, shots: int, rng: np.random.Generator,
              max_rest: Optional[int] = None) -> Task:
    """A `ways`-way `shots`-shot task from `classes` (relabelled 0..ways-1), and the rest of those classes' images
    (at most `max_rest` of each, drawn at random)."""
    picked = rng.choice(classes, ways, replace=False)
    s_idx, r_idx, s_y, r_y = [], [], [], []
    for new, c in enumerate(picked):
        idx = rng.permutation(np.flatnonzero(source.y == c))
        if len(idx) < shots + 1:
            raise DataError(f"meta: source class {source.class_names[c]!r} has {len(idx)} images, "
                            f"fewer than meta shots + 1 = {shots + 1}")
        rest = idx[shots:] if max_rest is None else idx[shots:shots + max_rest]
        s_idx.append(idx[:shots]), r_idx.append(rest)
        s_y.append(np.full(shots, new)), r_y.append(np.full(len(rest), new))
    names = [source.class_names[c] for c in picked]
    return Task(ImageSet(source.x[np.concatenate(s_idx)], np.concatenate(s_y), names),
                ImageSet(source.x[np.concatenate(r_idx)], np.concatenate(r_y), names))


def inner_config(p: GanParams, steps: int, lr: float, gamma: float, seed: int) -> GanTrainConfig:
    """The training settings of one adaptation: `steps` steps at lr (decayed by gamma) from the meta start, with
    the gan params' batch, noise, DiffAugment and EMA, and no freezing or averaging."""
    return replace(GanTrainConfig.from_params(p), steps=steps, lr_g=lr, lr_d=lr, lr_gamma=gamma, seed=seed,
                   alternate_steps=0, frozen_d_blocks=0, average_last=0, ema_start=min(p.ema_start, steps))


def adapt(start: Optional[dict], task: ImageSet, cfg: GanConfig, tc: GanTrainConfig, device: torch.device,
          on_step: Optional[Callable[[GanTrainer], None]] = None) -> GanTrainer:
    """G and D from `start` (shared weights; class embeddings new; None: from scratch), trained `tc.steps` steps
    on `task`; `on_step(trainer)` after every step."""
    real = BalancedBatches(to_float(task.x).to(device), torch.as_tensor(task.y, dtype=torch.long), len(task.class_names))
    trainer = GanTrainer(GanConfig(**{**asdict(cfg), "n_classes": len(task.class_names)}), tc, real, device, start)
    for _ in range(tc.steps):
        trainer.train_step()
        if on_step is not None:
            on_step(trainer)
    return trainer


def class_specific(key: str) -> bool:
    """The per-class weights (conditional-BN embeddings, D's projection): new in every episode, never meta-learned."""
    return CLASS_SPECIFIC in key.split(".")


def _fingerprint(source: ImageSet, p: GanParams, m: MetaParams, ways: int, shots: int, device: torch.device) -> str:
    fp = checkpoint.Fingerprint(p.model_dump_json(exclude={"checkpoint_every"}) +
                                m.model_dump_json(exclude={"checkpoint_every"}) + f"|{ways}|{shots}", device)
    fp.tensor("x", source.x).tensor("y", np.asarray(source.y, dtype=np.int64))
    return fp.code([gan_model, sys.modules[GanTrainer.__module__], sys.modules[__name__]]).hexdigest()


def meta_train(source: ImageSet, p: GanParams, m: MetaParams, ways: int, shots: int, device: torch.device,
               ckpt_path: Optional[Path] = None, stop_after: Optional[int] = None) -> dict:
    """Reptile over `m.episodes` source tasks; {'generator', 'discriminator', 'config', 'summary'} (plain tensors)."""
    train_classes, val_classes = split_classes(source, m, ways)
    cfg = GanConfig(ways, source.x.shape[-1], source.x.shape[1], p.z_dim, p.g_width, p.d_width, p.arch)
    seed_everything(m.seed)
    meta = {"generator": build_generator(cfg).state_dict(), "discriminator": build_discriminator(cfg).state_dict()}
    fp = _fingerprint(source, p, m, ways, shots, device) if ckpt_path is not None else ""
    start, state = 0, checkpoint.load(ckpt_path, fp, "meta_gan")
    if state is not None:
        meta, start = {"generator": state["generator"], "discriminator": state["discriminator"]}, int(state["episode"])
    end = m.episodes if stop_after is None else min(stop_after, m.episodes)
    t0 = time.perf_counter()
    for ep in progress(range(start, end), desc="meta_gan", initial=start, total=m.episodes):
        task = draw_task(source, train_classes, ways, shots, np.random.default_rng([m.seed, ep])).shots
        q = inner_config(p, m.inner_steps, m.inner_lr, 0.0, seed=m.seed * 1_000_003 + ep)
        trainer = adapt(meta, task, cfg, q, device)
        eps = outer_step(ep, m.episodes, m.outer_lr)
        reptile_update(meta["generator"], trainer.g_net.state_dict(), eps, skip=class_specific)
        reptile_update(meta["discriminator"], trainer.d_net.state_dict(), eps, skip=class_specific)
        if ckpt_path is not None and (ep + 1) % m.checkpoint_every == 0 and ep + 1 < m.episodes:
            checkpoint.save(ckpt_path, {**meta, "episode": ep + 1}, fp)
    summary = {"episodes": m.episodes, "ways": ways, "shots": shots, "resumed_from": start,
               "seconds": round(time.perf_counter() - t0, 2), "train_classes": len(train_classes), "val_classes": [source.class_names[c] for c in val_classes]}
    if end < m.episodes:
        return {"summary": {**summary, "stopped": True}}
    if ckpt_path is not None:
        Path(ckpt_path).unlink(missing_ok=True)
        remove_stale_temporaries(ckpt_path)
    meta = {k: {n: t.cpu() for n, t in v.items()} for k, v in meta.items()}
    return {**meta, "config": asdict(cfg), "summary": summary, "val_classes": val_classes}


def meta_validate(start: dict, source: ImageSet, val_classes: np.ndarray, p: GanParams, m: MetaParams, ways: int,
                  shots: int, features: Features, device: torch.device) -> dict:
    """KID on held-out source tasks for every (lr, gamma) x steps of the grid; the best, and the whole grid."""
    cfg = GanConfig(**start["config"])
    checkpoints, grid = sorted(set(m.steps_grid)), {}
    for t in range(m.val_tasks):
        task = draw_task(source, val_classes, ways, shots, np.random.default_rng([m.seed, 10_000 + t]),
                         max_rest=KID_REFERENCE_PER_CLASS)
        ref = features(to_float(task.rest.x))
        labels = torch.as_tensor(task.rest.y, dtype=torch.long)
        for lr, gamma in itertools.product([m.inner_lr * f for f in m.lr_factors], m.gamma_grid):
            def measure(trainer: GanTrainer) -> None:
                if trainer.step in checkpoints:
                    fake = sample(trainer.g_ema, labels, p.z_dim, torch.Generator().manual_seed(t), device, 256)
                    score = kid(features(fake), ref, subsets=20, seed=t)["mean"]
                    grid.setdefault((lr, gamma, trainer.step), []).append(score)
            adapt(start, task.shots, cfg, inner_config(p, max(checkpoints), lr, gamma, seed=m.seed + t), device, measure)
    table = [{"lr": lr, "lr_gamma": g, "steps": s, "kid": float(np.mean(v))} for (lr, g, s), v in sorted(grid.items())]
    best = min(table, key=lambda r: r["kid"])
    return {"chosen": best, "grid": table, "val_tasks": m.val_tasks}
