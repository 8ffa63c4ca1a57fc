"""Training the `dagan` kind's model: G(x, z) learns class-preserving variations from pairs of source images.

Every step draws a batch of pairs (x, x'): two different images of one class,
classes in turn from a random first one, and for each x an image x~ of another
class. D (`ganaug/nets/dagan.py`) learns with the hinge loss to score (x, x')
above both (x, G(x, z)) and, weighted by `mismatch`, (x, x~) (a
matching-aware discriminator, as in Reed et al. 2016): without those
mismatched pairs D hardly learns that a pair must share its class, and once G
is pushed to vary, its variations drift to other digits. G learns to raise
D's score of its pairs; a mode-seeking term (Mao et al. 2019), weighted by
`diversity` and capped at `diversity_cap`, rewards two noise vectors for
giving different variations of one x, since D alone lets G ignore z. Every pair goes through the same
DiffAugment policy as one 2C-channel image, so a pair is shifted and cut out
as a whole. Adam, and an EMA copy of G (what sampling uses by default). The
source classes' labels only say which images pair up; the target's classes are
never needed.

After `steps` steps on the source images, `adapt_steps` more steps go on pairs
of the target shots (classes with at least two shots), with the same
optimisers: a short adaptation to the target's look.

Every random number comes from one `torch.Generator` seeded with `seed`; every
`checkpoint_every` steps the whole state (nets, optimisers, that generator,
the step) is written through `ganaug/train/checkpoint.py` with a fingerprint of
the config, the images, the code and the device, so a killed run resumes to
bit-identical weights on CPU. `dagan_checkpoint` is what
`models/generators/dagan.pt` holds (kind `dagan`): G's raw and EMA weights, its
config and the class names of the target whose shots it varies.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ganaug.config.errors import DataError
from ganaug.io.atomic import remove_stale_temporaries
from ganaug.io.data import ImageSet, to_float
from ganaug.nets import dagan, diffaug, gan
from ganaug.nets.dagan import KIND, DaganConfig, DaganGenerator, PairDiscriminator
from ganaug.nets.diffaug import diff_augment
from ganaug.nets.gan import d_hinge_loss, g_hinge_loss
from ganaug.train import checkpoint
from ganaug.train.runtime import progress, seed_everything


@dataclass(frozen=True)
class DaganTrainConfig:
    z_dim: int = 16
    g_width: int = 16
    d_width: int = 16
    steps: int = 1000  # on pairs of source images
    adapt_steps: int = 0  # then on pairs of target shots
    batch_size: int = 32
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.99
    diffaug: str = "translation,cutout"  # on both pairs, each pair as one image (ganaug/nets/diffaug.py)
    mismatch: float = 1.0  # weight of D's hinge loss on real pairs of two classes, scored as fakes
    diversity: float = 1.0  # weight of the mode-seeking term: G's loss falls as two noises give more different images
    diversity_cap: float = 0.08  # ... until they differ by this much (mean |difference| per unit of noise distance)
    checkpoint_every: int = 100
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return self.steps + self.adapt_steps


class PairBatches:
    """Pairs of two different images of one class, drawn with a torch.Generator; classes with one image are left out."""

    def __init__(self, ds: ImageSet, device: torch.device, what: str):
        y = torch.as_tensor(np.asarray(ds.y), dtype=torch.long)
        count = torch.bincount(y, minlength=len(ds.class_names))  # (K,)
        self.classes = torch.nonzero(count >= 2).flatten()  # (K',) the classes that make pairs
        if len(self.classes) == 0:
            raise DataError(f"{KIND}: {what} has no class with two images to pair")
        order = torch.argsort(y, stable=True)
        self.x = to_float(ds.x)[order].to(device)  # (N, C, S, S), sorted by class
        self.count, self.start = count, torch.cumsum(count, 0) - count  # (K,), (K,)

    def _pick(self, labels: torch.Tensor, g: torch.Generator, avoid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Row (n,) of a uniformly drawn image of each label's class; with `avoid` (n,) rows, another image."""
        count, start = self.count[labels], self.start[labels]  # (n,), (n,)
        if avoid is None:
            return start + (torch.rand(len(labels), generator=g) * count).long().clamp_max(count - 1)
        step = 1 + (torch.rand(len(labels), generator=g) * (count - 1)).long().clamp_max(count - 2)
        return start + (avoid - start + step) % count

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n pairs (x, x') of one class, x != x', classes cycling from a random first one, and for each x an image
        of another class (x itself where there is only one class); each (n, C, S, S)."""
        k = len(self.classes)
        at = (torch.arange(n) + torch.randint(k, (1,), generator=g)) % k  # (n,) positions in self.classes
        labels = self.classes[at]
        i = self._pick(labels, g)
        j = self._pick(labels, g, avoid=i)
        wrong = self._pick(self.classes[(at + 1 + torch.randint(max(k - 1, 1), (n,), generator=g)) % k], g)
        rows = (i, j, wrong if k > 1 else i)
        return tuple(self.x[r.to(self.x.device)] for r in rows)


class DaganTrainer:
    """G, D, EMA of G, their optimisers and the one random generator; one step at a time."""

    def __init__(self, cfg: DaganConfig, tc: DaganTrainConfig, device: torch.device):
        self.tc, self.device = tc, device
        self.rng = seed_everything(tc.seed)  # also makes the weight init deterministic
        self.g_net = DaganGenerator(cfg).to(device).train()
        self.d_net = PairDiscriminator(cfg).to(device).train()
        self.g_ema = copy.deepcopy(self.g_net).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g_net.parameters(), lr=tc.lr_g, betas=tc.betas)
        self.opt_d = torch.optim.Adam(self.d_net.parameters(), lr=tc.lr_d, betas=tc.betas)
        self.step = 0

    def _augment(self, pairs: torch.Tensor) -> torch.Tensor:
        return diff_augment(pairs, self.tc.diffaug, self.rng)  # (B, 2C, S, S)

    def d_step(self, x: torch.Tensor, x_other: torch.Tensor, x_wrong: torch.Tensor,
               fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """One hinge-loss update of D on real pairs (x, x') against (x, G(x, z)) (detached) and, weighted by
        `mismatch`, against (x, an image of another class): D learns that a pair must share its class."""
        pairs = [torch.cat([x, other], 1) for other in (x_other, fake.detach(), x_wrong)]  # (B, 2C, S, S) each
        logits = self.d_net.forward_pair(self._augment(torch.cat(pairs)))  # (3B,)
        real_logits, fake_logits, wrong_logits = logits.chunk(3)
        loss = d_hinge_loss(real_logits, fake_logits) + self.tc.mismatch * torch.relu(1.0 + wrong_logits).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return {"loss_d": loss.detach(), "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}

    def g_step(self, x: torch.Tensor, fake: torch.Tensor, fake2: torch.Tensor,
               z_gap: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of G: the hinge loss of both fakes' pairs (freshly augmented, D without weight gradients)
        minus `diversity` times how far apart the two fakes of one x are per unit of noise distance, up to
        `diversity_cap` (mode seeking, capped so that it cannot outweigh keeping the class)."""
        self.d_net.requires_grad_(False)
        adv = g_hinge_loss(self.d_net.forward_pair(self._augment(torch.cat([x.repeat(2, 1, 1, 1),
                                                                            torch.cat([fake, fake2])], 1))))
        self.d_net.requires_grad_(True)
        spread = (fake - fake2).abs().mean() / z_gap
        loss = adv - self.tc.diversity * spread.clamp_max(self.tc.diversity_cap)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"loss_g": adv.detach(), "spread": spread.detach()}

    @torch.no_grad()
    def ema_update(self) -> None:
        """ema = decay*ema + (1-decay)*g for the parameters; buffers (BN statistics) copied."""
        torch._foreach_lerp_(list(self.g_ema.parameters()), list(self.g_net.parameters()), 1.0 - self.tc.ema_decay)
        torch._foreach_copy_(list(self.g_ema.buffers()), list(self.g_net.buffers()))

    def train_step(self, pairs: PairBatches) -> dict[str, torch.Tensor]:
        """One D and one G update on one batch of pairs (G runs once per step)."""
        x, x_other, x_wrong = pairs.draw(self.tc.batch_size, self.rng)  # (B, C, S, S) each
        z = torch.randn((2 * len(x), self.tc.z_dim), generator=self.rng).to(self.device)  # (2B, z_dim): two per x
        fake, fake2 = self.g_net(x.repeat(2, 1, 1, 1), z).chunk(2)  # (B, C, S, S) each
        z_gap = (z[:len(x)] - z[len(x):]).abs().mean()
        stats = {**self.d_step(x, x_other, x_wrong, fake), **self.g_step(x, fake, fake2, z_gap)}
        self.ema_update()
        self.step += 1
        return stats

    def state_dict(self) -> dict:
        return {"g": self.g_net.state_dict(), "d": self.d_net.state_dict(), "g_ema": self.g_ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(), "step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.g_net.load_state_dict(sd["g"])
        self.d_net.load_state_dict(sd["d"])
        self.g_ema.load_state_dict(sd["g_ema"])
        self.opt_g.load_state_dict(sd["opt_g"])
        self.opt_d.load_state_dict(sd["opt_d"])
        self.rng.set_state(sd["rng"])
        torch.set_rng_state(sd["torch_rng"])
        self.step = int(sd["step"])


def fingerprint(tc: DaganTrainConfig, source: ImageSet, target: Optional[ImageSet], device: torch.device) -> str:
    """What a run's result depends on: the config (without checkpoint_every), the images, the code, the device."""
    conf = {k: v for k, v in asdict(tc).items() if k != "checkpoint_every"}
    fp = checkpoint.Fingerprint(repr(sorted(conf.items())), device)
    for name, ds in (("source", source), ("target", target if tc.adapt_steps else None)):
        if ds is not None:
            fp.tensor(f"{name}_x", ds.x).tensor(f"{name}_y", np.asarray(ds.y, dtype=np.int64))
    return fp.code([sys.modules[__name__], dagan, gan, diffaug]).hexdigest()


def run_steps(trainer: DaganTrainer, phases: list[PairBatches], end: int, ckpt: Optional[Path], fp: str) -> dict:
    """Train up to step `end` (source pairs, then target pairs), checkpointing every `checkpoint_every` steps."""
    tc, sums = trainer.tc, {}
    for _ in progress(range(trainer.step, end), desc=KIND, initial=trainer.step, total=tc.total_steps):
        stats = trainer.train_step(phases[0] if trainer.step < tc.steps else phases[-1])
        sums = {k: sums.get(k, 0.0) + float(v) for k, v in stats.items()}
        if ckpt is not None and trainer.step % tc.checkpoint_every == 0 and trainer.step < tc.total_steps:
            checkpoint.save(ckpt, trainer.state_dict(), fp)
    return sums


def train_dagan(source: ImageSet, target: Optional[ImageSet], tc: DaganTrainConfig, device: torch.device,
                ckpt_path: Optional[Path] = None, stop_after: Optional[int] = None) -> tuple[DaganTrainer, dict]:
    """Train the DAGAN on pairs of `source` (then `adapt_steps` on pairs of the `target` shots); (trainer, summary).

    `stop_after` (for tests) returns after that many steps in total as if the
    process had been killed: the last checkpoint stays and the summary says `stopped`.
    """
    cfg = DaganConfig(source.x.shape[-1], source.x.shape[1], tc.z_dim, tc.g_width, tc.d_width)
    phases = [PairBatches(source, device, "the source set")]
    if tc.adapt_steps:
        phases.append(PairBatches(target, device, "the target shots"))
    trainer = DaganTrainer(cfg, tc, device)
    fp = fingerprint(tc, source, target, device) if ckpt_path is not None else ""
    state = checkpoint.load(ckpt_path, fp, KIND)
    if state is not None:
        trainer.load_state_dict(state)
    start, end = trainer.step, tc.total_steps if stop_after is None else min(stop_after, tc.total_steps)
    t0 = time.perf_counter()
    sums = run_steps(trainer, phases, end, ckpt_path, fp)
    summary = {"steps": tc.total_steps, "resumed_from": start, "seconds": round(time.perf_counter() - t0, 2),
               **{k: round(v / max(end - start, 1), 4) for k, v in sums.items()}}
    if end < tc.total_steps:
        return trainer, {**summary, "stopped": True}
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
        remove_stale_temporaries(ckpt_path)
    return trainer, summary


def dagan_checkpoint(trainer: DaganTrainer, tc: DaganTrainConfig, class_names: list[str]) -> dict:
    """The `dagan` generator checkpoint (plain tensors and containers: loads with weights_only=True)."""
    return {"kind": KIND, "config": asdict(trainer.g_net.cfg), "class_names": list(class_names),
            "generator": trainer.g_net.state_dict(), "generator_ema": trainer.g_ema.state_dict(),
            "step": trainer.step, "train": {k: v for k, v in asdict(tc).items() if k != "betas"}}
