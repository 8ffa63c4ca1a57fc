"""Training a class-conditional GAN on a labelled image set (the stages train_gan and pretrain_gan).

Hinge loss, Adam, DiffAugment on real and fake images (in the D and the G step),
class-balanced minibatches and an EMA copy of the generator (the one synthesize uses).
Each step runs G once: D is updated on its detached images, then G through the
same images freshly augmented, as in DCGAN. Speed (bench/throughput.py): nets and
images in channels_last, fused Adam, no host sync per step; `gan.precision: bf16`
runs G and D under bfloat16 autocast (fast on CPUs with AVX512-BF16/AMX and on GPUs).

Transfer (`gan.init: source`): G and D start from `models/gan_source.pt` (stage
pretrain_gan) with the class embeddings re-initialised (`gan.init: meta`: from the
meta-learned `models/gan_meta.pt`, adapted with the learning rate, decay and
steps its meta-validation chose, `with_meta_choice`); `gan.freeze: d_lower`
keeps D's first `gan.freeze_d_blocks` conv layers fixed (FreezeD), `alternate`
trains D only, then G only, `gan.alternate_steps` steps each. `gan.lr_schedule:
exp` decays both learning rates as lr_0 * exp(-lr_gamma * t); `gan.average_last`
k > 0 also exports the mean of G's last k snapshots (`generator_average`).

Resumable: every `gan.checkpoint_every` steps the whole training state (nets,
optimisers, the torch.Generator every random number is drawn from, the global
torch RNG state and the step) is written to `<ckpt_dir>/<fingerprint>.pt`
(`checkpoints/train_gan/` for the stage train_gan).
The checkpoint and its fingerprint come from `ganaug/train/checkpoint.py`, the
same module the supervised loop uses: the gan params (except `checkpoint_every`),
the training images, labels and class names, the source of the GAN modules and
the device type, so a changed config, dataset, code or device never resumes a
stale checkpoint. A run that is killed and restarted ends with
weights bit-identical (on CPU) to an uninterrupted run. The checkpoint is
deleted when training finishes.
"""
from __future__ import annotations

import copy
import hashlib
import math
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ganaug.config.errors import DataError, UserError
from ganaug.config.params import GanParams
from ganaug.io.atomic import atomic_file, remove_stale_temporaries
from ganaug.io.data import ImageSet, to_float
from ganaug.nets import diffaug, gan as gan_model
from ganaug.nets.diffaug import diff_augment
from ganaug.nets.gan import GanConfig, build_discriminator, build_generator, d_hinge_loss, g_hinge_loss
from ganaug.nets.generators import checkpoint_kind
from ganaug.train import checkpoint
from ganaug.train.runtime import open_live, progress, seed_everything

LOG_EVERY = 10


@dataclass(frozen=True)
class GanTrainConfig:
    """The GAN training loop's settings: plain values, built once from the gan params (`from_params`)."""
    steps: int
    batch_size: int
    z_dim: int
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    diffaug: str  # DiffAugment policy, on real and fake images (ganaug/nets/diffaug.py)
    ema_decay: float
    ema_start: int
    seed: int
    checkpoint_every: int
    lr_gamma: float = 0.0  # lr_t = lr_0 * exp(-lr_gamma * t); 0: constant
    alternate_steps: int = 0  # > 0: D only, then G only, this many steps each (freeze=alternate); 0: both each step
    frozen_d_blocks: int = 0  # D's first conv layers kept fixed (FreezeD, freeze=d_lower)
    average_last: int = 0  # > 0: the mean of G's last k snapshots, `average_every` steps apart
    average_every: int = 100
    bf16: bool = False  # G and D under bfloat16 autocast

    @classmethod
    def from_params(cls, p: GanParams) -> "GanTrainConfig":
        return cls(p.steps, p.batch_size, p.z_dim, p.lr_g, p.lr_d, (p.beta1, p.beta2), p.diffaug, p.ema_decay,
                   p.ema_start, p.seed, p.checkpoint_every,
                   lr_gamma=p.lr_gamma if p.lr_schedule == "exp" else 0.0,
                   alternate_steps=p.alternate_steps if p.freeze == "alternate" else 0,
                   frozen_d_blocks=p.freeze_d_blocks if p.freeze == "d_lower" else 0,
                   average_last=p.average_last, average_every=p.average_every, bf16=p.precision == "bf16")


class BalancedBatches:
    """Class-balanced minibatches of the real images, drawn with a torch.Generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int):
        order = torch.argsort(y, stable=True)
        self.x = x[order.to(x.device)]  # (N, C, S, S) on the device, sorted by class
        self.count = torch.bincount(y.cpu(), minlength=n_classes)  # (K,)
        self.start = torch.cumsum(self.count, 0) - self.count  # (K,)
        self.n_classes = n_classes

    def labels(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        """(B,) labels cycling through all classes from a random first class (CPU)."""
        first = torch.randint(self.n_classes, (1,), generator=g)
        return (torch.arange(batch_size) + first) % self.n_classes

    def images(self, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One uniformly drawn real image of each label's class: (B, C, S, S) on the device."""
        u = torch.rand(len(labels), generator=g)
        pick = (u * self.count[labels]).long().clamp_max(self.count[labels] - 1)
        return self.x[(self.start[labels] + pick).to(self.x.device)]


class GanTrainer:
    """G, D, EMA of G, their optimisers and the one random generator; one step at a time.

    `source` (a models/gan_source.pt dict) starts G and D from the source GAN, with
    the class-conditional parts (G's conditional-BN embeddings, D's projection
    embedding) left freshly initialised for the target classes.
    """

    def __init__(self, cfg: GanConfig, tc: GanTrainConfig, real: BalancedBatches, device: torch.device,
                 source: Optional[dict] = None):
        self.tc, self.real, self.device = tc, real, device
        self.rng = seed_everything(tc.seed)  # also makes the weight init deterministic
        # channels_last: the convolutions' fastest layout on CPU (oneDNN) and on GPU tensor cores
        self.memory_format = torch.channels_last
        self.g_net = build_generator(cfg).to(device, memory_format=self.memory_format).train()
        self.d_net = build_discriminator(cfg).to(device, memory_format=self.memory_format).train()
        if source is not None:
            transfer_weights(self.g_net, source["generator"])
            transfer_weights(self.d_net, source["discriminator"])
        self.frozen = frozen_d_layers(self.d_net, tc.frozen_d_blocks)
        self.g_ema = copy.deepcopy(self.g_net).eval().requires_grad_(False)
        d_params = [w for w in self.d_net.parameters() if id(w) not in self.frozen]
        # fused: one kernel for the whole update instead of ~10 small ops per parameter tensor
        self.opt_g = torch.optim.Adam(self.g_net.parameters(), lr=tc.lr_g, betas=tc.betas, fused=True)
        self.opt_d = torch.optim.Adam(d_params, lr=tc.lr_d, betas=tc.betas, fused=True)
        self.average = SnapshotAverage(self.g_net, tc.steps, tc.average_last, tc.average_every)
        self.step = 0

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.tc.z_dim), generator=self.rng).to(self.device)  # (B, z_dim)

    def _d_trainable(self, flag: bool) -> None:
        for w in self.d_net.parameters():
            w.requires_grad_(flag and id(w) not in self.frozen)

    def fake_batch(self, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-balanced labels (B,) and G's images of them (B, C, S, S), with G's graph if `with_grad`."""
        y = self.real.labels(self.tc.batch_size, self.rng).to(self.device)
        with torch.set_grad_enabled(with_grad):
            return y, self.g_net(self._noise(len(y)), y).contiguous(memory_format=self.memory_format)

    def d_step(self, y: torch.Tensor, x_fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """One hinge-loss update of D on augmented real images and the (detached) fakes of the same labels."""
        x_real = self.real.images(y.cpu(), self.rng)  # (B, C, S, S)
        x = diff_augment(torch.cat([x_real, x_fake.detach()]), self.tc.diffaug, self.rng)  # (2B, C, S, S)
        logits = self.d_net(x.contiguous(memory_format=self.memory_format), torch.cat([y, y])).float()  # (2B,)
        real_logits, fake_logits = logits.chunk(2)
        loss = d_hinge_loss(real_logits, fake_logits)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return {"loss_d": loss.detach(), "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}

    def g_step(self, y: torch.Tensor, x_fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """One hinge-loss update of G through a fresh augmentation and a frozen D (no weight gradients for D)."""
        self._d_trainable(False)
        x = diff_augment(x_fake, self.tc.diffaug, self.rng).contiguous(memory_format=self.memory_format)
        loss = g_hinge_loss(self.d_net(x, y).float())
        self._d_trainable(True)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"loss_g": loss.detach()}

    @torch.no_grad()
    def ema_update(self) -> None:
        """ema = decay*ema + (1-decay)*g from step ema_start on (a plain copy before); buffers copied."""
        decay = self.tc.ema_decay if self.step >= self.tc.ema_start else 0.0
        ema, raw = list(self.g_ema.parameters()), list(self.g_net.parameters())
        if decay:
            torch._foreach_lerp_(ema, raw, 1.0 - decay)  # one fused kernel per dtype, not one per tensor
        else:
            torch._foreach_copy_(ema, raw)
        torch._foreach_copy_(list(self.g_ema.buffers()), list(self.g_net.buffers()))

    def set_learning_rates(self) -> None:
        """lr_t = lr_0 * exp(-lr_gamma * t) (lr_gamma 0: constant)."""
        decay = math.exp(-self.tc.lr_gamma * self.step) if self.tc.lr_gamma else 1.0
        for opt, lr in ((self.opt_g, self.tc.lr_g), (self.opt_d, self.tc.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * decay

    def phase(self) -> str:
        """Which nets this step updates: 'both', or with freeze=alternate 'd' then 'g' for alternate_steps each."""
        if not self.tc.alternate_steps:
            return "both"
        return "d" if (self.step // self.tc.alternate_steps) % 2 == 0 else "g"

    def train_step(self) -> dict[str, torch.Tensor]:
        """One D and one G update on the same fake batch (G runs once per step, as in DCGAN)."""
        self.set_learning_rates()
        phase, stats = self.phase(), {}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tc.bf16):
            y, x_fake = self.fake_batch(with_grad=phase != "d")
            if phase in ("both", "d"):
                stats.update(self.d_step(y, x_fake))
            if phase in ("both", "g"):
                stats.update(self.g_step(y, x_fake))
        self.ema_update()
        self.step += 1
        self.average.maybe_add(self.g_net, self.step)
        return stats

    def state_dict(self) -> dict:
        return {
            "g": self.g_net.state_dict(), "d": self.d_net.state_dict(), "g_ema": self.g_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(), "step": self.step,
            "average": self.average.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.g_net.load_state_dict(sd["g"])
        self.d_net.load_state_dict(sd["d"])
        self.g_ema.load_state_dict(sd["g_ema"])
        self.opt_g.load_state_dict(sd["opt_g"])
        self.opt_d.load_state_dict(sd["opt_d"])
        self.rng.set_state(sd["rng"])
        torch.set_rng_state(sd["torch_rng"])
        self.step = int(sd["step"])
        self.average.load_state_dict(sd["average"])


# ---------------------------------------------------------------- transfer, freezing, averaging

CLASS_SPECIFIC = "embed"  # G's conditional-BN embeddings and D's projection: one row per class


def transfer_weights(net: torch.nn.Module, source_state: dict) -> None:
    """Copy the source GAN's weights into `net`, except the class-specific ones (kept as initialised)."""
    own = net.state_dict()
    shared = {k: v for k, v in source_state.items() if CLASS_SPECIFIC not in k.split(".")}
    bad = [k for k, v in shared.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise DataError(f"models/gan_source.pt: source GAN does not fit the target GAN ({bad[:3]}); "
                        f"gan.arch, z_dim, g_width, d_width, data.image_size and data.channels must match")
    net.load_state_dict({**own, **shared})


def frozen_d_layers(d_net: torch.nn.Module, n_blocks: int) -> set[int]:
    """ids of D's parameters that stay fixed: its first `n_blocks` convs (FreezeD; 0: none).

    Their spectral-norm power iteration is stopped too (eval mode), so the layers' effective weights do not move.
    """
    if n_blocks == 0:
        return set()
    layers = d_net.convs[:n_blocks]
    layers.eval()
    layers.requires_grad_(False)
    return {id(w) for w in layers.parameters()}


class SnapshotAverage:
    """The running mean of G's floating-point state at steps `steps - j * every`, j < last."""

    def __init__(self, g_net: torch.nn.Module, steps: int, last: int, every: int):
        self.steps = {steps - j * every for j in range(last)}
        self.sum = {k: torch.zeros_like(v) for k, v in g_net.state_dict().items() if v.is_floating_point()}
        self.n = 0

    @torch.no_grad()
    def maybe_add(self, g_net: torch.nn.Module, step: int) -> None:
        if step in self.steps:
            for k, v in g_net.state_dict().items():
                if k in self.sum:
                    self.sum[k] += v
            self.n += 1

    def mean(self, g_net: torch.nn.Module) -> Optional[dict]:
        """G's state with every float tensor replaced by the snapshot mean; None without snapshots."""
        if self.n == 0:
            return None
        return {k: (self.sum[k] / self.n if k in self.sum else v) for k, v in g_net.state_dict().items()}

    def state_dict(self) -> dict:
        return {"sum": self.sum, "n": self.n}

    def load_state_dict(self, sd: dict) -> None:
        self.sum, self.n = sd["sum"], int(sd["n"])


# ---------------------------------------------------------------- checkpoints

def fingerprint(ds: ImageSet, p: GanParams, device: torch.device, source_sha: str = "") -> str:
    """What a GAN run's result depends on (`checkpoint.Fingerprint`): the gan params, the training set, the
    source GAN's sha256 (init=source), the GAN code and the device type.

    `checkpoint_every` is left out: it does not change the result.
    """
    fp = checkpoint.Fingerprint(p.model_dump_json(exclude={"checkpoint_every"}), device).text(source_sha)
    fp.tensor("x", ds.x).tensor("y", np.asarray(ds.y, dtype=np.int64)).text("\0".join(ds.class_names))
    return fp.code([diffaug, gan_model, sys.modules[__name__]]).hexdigest()


def load_source_gan(path: Optional[Path]) -> dict:
    """The start written by pretrain_gan (its weights and sha256), for gan.init=source or checkpoint."""
    if path is None or not Path(path).is_file():
        raise UserError(f"{path}: source GAN not found (gan.init=source or checkpoint needs the pretrain_gan stage)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: not a GAN checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(blob, dict) or "generator" not in blob or "discriminator" not in blob:
        raise UserError(f"{path}: holds no source GAN (was pretrain_gan run with gan.init=scratch?); run it again")
    return {**blob, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


GAN_FILE_KEYS = ("config", "class_names", "generator", "discriminator")


def check_gan_checkpoint(path: Path, p: GanParams) -> dict:
    """A user's GAN checkpoint for gan.init=checkpoint: a ganaug models/gan.pt whose nets fit the gan params."""
    where = f"gan.init_checkpoint: {path}"
    if not path.is_file():
        raise UserError(f"{where}: file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"{where}: not readable as weights only ({exc.__class__.__name__})") from None
    if not isinstance(blob, dict) or any(k not in blob for k in GAN_FILE_KEYS) or not isinstance(blob["config"], dict):
        raise UserError(f"{where}: not a GAN checkpoint written by ganaug's train_gan (needs {list(GAN_FILE_KEYS)})")
    checkpoint_kind(blob, where, expect=gan_model.KIND)
    cfg = blob["config"]
    wrong = [f"gan.{k}={getattr(p, k)} but the checkpoint has {cfg.get(k)}" for k in ("arch", "z_dim", "g_width", "d_width")
             if cfg.get(k, "resize" if k == "arch" else None) != getattr(p, k)]
    if wrong:
        raise UserError(f"{where}: does not fit the gan params: {'; '.join(wrong)}")
    return {k: blob[k] for k in GAN_FILE_KEYS}


def with_meta_choice(p: GanParams, start: dict) -> GanParams:
    """gan.init meta: adapt with the learning rate, decay and steps meta-validation chose (models/gan_meta.pt)."""
    c = start.get("chosen")
    if not isinstance(c, dict) or not {"lr", "lr_gamma", "steps"} <= set(c):
        raise UserError("models/gan_meta.pt: no meta-validated choice in it (was meta_gan run with gan.init=meta?)")
    return p.model_copy(update={"lr_g": float(c["lr"]), "lr_d": float(c["lr"]), "lr_gamma": float(c["lr_gamma"]),
                                "lr_schedule": "exp" if c["lr_gamma"] > 0 else "constant", "steps": int(c["steps"]),
                                "average_last": 0})


def resume(trainer: GanTrainer, path: Path, fp: str) -> int:
    """Load the checkpoint at `path` if there is a usable one; return the step training goes on from."""
    sd = checkpoint.load(path, fp, "train_gan")
    if sd is None:
        return 0
    trainer.load_state_dict(sd)
    return trainer.step


def export_model(trainer: GanTrainer, cfg: GanConfig, class_names: list[str], p: GanParams, out_path: Path) -> None:
    """Write `models/gan.pt` (plain tensors and containers: loads with weights_only=True)."""
    obj = {
        "kind": gan_model.KIND, "config": asdict(cfg), "class_names": list(class_names),
        "generator": trainer.g_net.state_dict(), "generator_ema": trainer.g_ema.state_dict(),
        "discriminator": trainer.d_net.state_dict(), "step": trainer.step, "params": p.model_dump(),
    }
    average = trainer.average.mean(trainer.g_net)
    if average is not None:
        obj["generator_average"] = average
    with atomic_file(out_path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------- curves

class Curves:
    """Means of the step statistics over every LOG_EVERY steps, logged to dvclive at the step they end."""

    def __init__(self, live_dir: Optional[str]):
        self.live = open_live(live_dir) if live_dir else None
        self.sums: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = {}  # per statistic: with freeze=alternate a step updates only D or only G
        self.last: dict[str, float] = {}

    def add(self, step: int, stats: dict[str, torch.Tensor], final: bool) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.n[k] = self.n.get(k, 0) + 1
        if step % LOG_EVERY == 0 or final:
            self.last = {k: float(v) / self.n[k] for k, v in self.sums.items()}
            self.sums, self.n = {}, {}
            if self.live:
                self.live.step = step
                for k, v in self.last.items():
                    self.live.log_metric(k, v)
                self.live.next_step()

    def end(self) -> None:
        if self.live:
            self.live.end()


# ---------------------------------------------------------------- the training run

def _check_data(ds: ImageSet) -> None:
    if len(ds) == 0:
        raise DataError("train_gan: the training set is empty")
    empty = [name for name, n in ds.counts().items() if n == 0]
    if empty:
        raise DataError(f"train_gan: class(es) {empty} have no training images")


def run_steps(trainer: GanTrainer, end: int, ckpt: Path, fp: str, curves: Curves) -> None:
    """Train up to step `end`, logging curves and checkpointing every `checkpoint_every` steps."""
    tc = trainer.tc
    for _ in progress(range(trainer.step, end), desc="train_gan", initial=trainer.step, total=tc.steps):
        stats = trainer.train_step()
        curves.add(trainer.step, stats, final=trainer.step == tc.steps)
        if trainer.step % tc.checkpoint_every == 0 and trainer.step < tc.steps:
            checkpoint.save(ckpt, trainer.state_dict(), fp)
    curves.end()


def train_gan(
    ds: ImageSet,
    p: GanParams,
    out_path: Path,
    ckpt_dir: Path,
    device: torch.device,
    live_dir: Optional[str] = None,
    stop_after: Optional[int] = None,
    source_path: Optional[Path] = None,
) -> dict:
    """Train the GAN on `ds`, write `out_path`; return a summary.

    With `gan.init: source`, G and D start from the source GAN at `source_path`.
    `stop_after` (for tests) returns after that many steps in total as if the
    process had been killed: no model is written and the last checkpoint stays.
    """
    _check_data(ds)
    cfg = GanConfig(len(ds.class_names), ds.x.shape[-1], ds.x.shape[1], p.z_dim, p.g_width, p.d_width, p.arch)
    real = BalancedBatches(to_float(ds.x).to(device), torch.as_tensor(ds.y, dtype=torch.long), cfg.n_classes)
    source = load_source_gan(source_path) if p.init in ("source", "checkpoint", "meta") else None
    if p.init == "meta":
        p = with_meta_choice(p, source)
    trainer = GanTrainer(cfg, GanTrainConfig.from_params(p), real, device, source)
    fp = fingerprint(ds, p, device, source["sha256"] if source else "")
    ckpt = Path(ckpt_dir) / f"{fp}.pt"
    start, curves = resume(trainer, ckpt, fp), Curves(live_dir)
    t0 = time.perf_counter()
    run_steps(trainer, p.steps if stop_after is None else min(stop_after, p.steps), ckpt, fp, curves)
    seconds = time.perf_counter() - t0
    summary = {"steps": trainer.step, "resumed_from": start, "seconds": round(seconds, 2),
               "images_per_s": round((trainer.step - start) * p.batch_size / max(seconds, 1e-9), 1),
               **{k: round(v, 4) for k, v in curves.last.items()}}
    if trainer.step < p.steps:
        return {**summary, "stopped": True}
    export_model(trainer, cfg, ds.class_names, p, out_path)
    ckpt.unlink(missing_ok=True)
    remove_stale_temporaries(ckpt)  # what a run killed while checkpointing left
    return {**summary, "out": str(out_path)}

