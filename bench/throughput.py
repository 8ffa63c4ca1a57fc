"""How fast is ganaug? Its training step, synthesis and fine-tuning against minimal reference PyTorch loops.

Measured in one process, in alternating timed rounds (A B, B A, ...) so that
load from other processes hits both sides alike; every number is the median over
rounds of images per second.

- GAN training: ganaug's `GanTrainer.train_step` (D and G hinge steps with
  DiffAugment, spectral norm, EMA; default `gan:` params) against a plain
  conditional DCGAN written below as a user would (label embedding, transposed
  convs, BCE, `DataLoader`, `loss.item()` every step), scaled to the same
  parameter count (within 5%), batch and image size. Real images per second.
- What speeds ganaug's step up on a CPU: torch threads, `channels_last`, fused Adam,
  `torch.compile` (steady state and the compile time it must win back).
- Synthesis: `ganaug.tools.synthesis.synthesize` (EMA generator, PNGs, manifest,
  sample grid) against generating with the reference G and saving PNGs with PIL.
- Fine-tuning: `ganaug.train.finetune.finetune` against a minimal AdamW loop over a
  `DataLoader` on the same classifier, batch and data; plus the cost of classical augmentation.
- The default `dvc repro` in a throw-away copy of the project: wall time, peak
  RSS (the largest process), and the wall time of a re-run with nothing changed.

    .venv/bin/python -m bench.throughput            # about 5 min on 2 cores, 2 of them the default repro
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from PIL import Image

from bench.common import (DOC, ROOT, command_line, deep_update, machine, make_project, markdown_table,
                          parse_overrides, tool_env, publish)
from ganaug.config.params import Params, parse_params
from ganaug.io.data import ImageSet, load_prepared, to_float, to_uint8
from ganaug.nets.classifier import ClassifierConfig, build_classifier, save_classifier
from ganaug.nets.gan import GanConfig, build_discriminator, build_generator
from ganaug.train.finetune import finetune
from ganaug.train.gan import BalancedBatches, GanTrainConfig, GanTrainer, export_model
from ganaug.train.runtime import configure_threads
from stages.prepare import prepare
from ganaug.tools.synthesis import synthesize

CPU = torch.device("cpu")


# ---------------------------------------------------------------- the reference conditional DCGAN

class RefGenerator(nn.Module):
    """z ++ embed(y) -> ConvT to (4w, S/4, S/4) -> ConvT x2 -> (C, S, S), BatchNorm + ReLU, tanh."""

    def __init__(self, z_dim: int, n_classes: int, width: int, size: int, channels: int):
        super().__init__()
        self.embed = nn.Embedding(n_classes, z_dim)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * z_dim, 4 * width, size // 4, 1, 0, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(True),
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, channels, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y)], 1)[:, :, None, None])  # (B, C, S, S)


class RefDiscriminator(nn.Module):
    """image ++ a label plane -> strided convs with LeakyReLU (+ BatchNorm) -> one logit."""

    def __init__(self, n_classes: int, width: int, size: int, channels: int):
        super().__init__()
        self.size = size
        self.embed = nn.Embedding(n_classes, size * size)
        self.net = nn.Sequential(
            nn.Conv2d(channels + 1, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * width, 1, size // 4, 1, 0, bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        plane = self.embed(y).view(-1, 1, self.size, self.size)
        return self.net(torch.cat([x, plane], 1)).view(-1)  # (B,)


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def reference_nets(cfg: GanConfig, target: int) -> tuple[RefGenerator, RefDiscriminator]:
    """The reference G and D whose total parameter count is closest to `target`."""
    def build(w: int):
        return (RefGenerator(cfg.z_dim, cfg.n_classes, w, cfg.image_size, cfg.channels),
                RefDiscriminator(cfg.n_classes, w, cfg.image_size, cfg.channels))

    def count(w: int) -> int:  # grows with the width, so a binary search finds the closest
        return n_params(*build(w))
    widths = range(2, 513)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        i = bisect.bisect_left(widths, target, key=count)
        width = min(widths[max(i - 1, 0): i + 1], key=lambda w: abs(count(w) - target))
    torch.manual_seed(0)
    return build(width)


class ReferenceLoop:
    """The DCGAN tutorial's loop: DataLoader batches, BCE, one D and one G update, `.item()` logged every step.

    `lean=True`: the same maths with the data kept as one tensor (indexing, no DataLoader) and no `.item()`.
    `nets`: run this loop on other nets (ganaug's G and D), which separates the loop's cost from the nets'.
    `device`: nets, data and noise there (with a GPU, `lean=True`: the images live on the device).
    """

    def __init__(self, ds: ImageSet, cfg: GanConfig, target_params: int, batch_size: int, lean: bool = False,
                 nets: Optional[tuple[nn.Module, nn.Module]] = None, device: torch.device = CPU):
        self.g_net, self.d_net = (m.to(device) for m in (nets or reference_nets(cfg, target_params)))
        self.z_dim, self.batch_size, self.lean, self.device = cfg.z_dim, batch_size, lean, device
        self.opt_g = torch.optim.Adam(self.g_net.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d_net.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.x, self.y = to_float(ds.x).to(device), torch.as_tensor(np.array(ds.y), dtype=torch.long).to(device)
        self.loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y),
                                                  batch_size=batch_size, shuffle=True, drop_last=True)
        self.batches: Iterator = iter(())
        self.log: list[float] = []
        self.g = torch.Generator().manual_seed(0)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lean:
            idx = torch.randint(len(self.y), (self.batch_size,), generator=self.g).to(self.device)
            return self.x[idx], self.y[idx]
        try:
            return next(self.batches)
        except StopIteration:  # one epoch is shorter than a batch list: start a new one
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        x, y = self._batch()
        ones, zeros = torch.ones(len(y), device=self.device), torch.zeros(len(y), device=self.device)
        fake = self.g_net(torch.randn(len(y), self.z_dim, device=self.device), y)
        loss_d = (F.binary_cross_entropy_with_logits(self.d_net(x, y), ones)
                  + F.binary_cross_entropy_with_logits(self.d_net(fake.detach(), y), zeros))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(self.d_net(fake, y), ones)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        if not self.lean:
            self.log.append(loss_d.item() + loss_g.item())


# ---------------------------------------------------------------- ganaug's step, as train_gan runs it

def ganaug_trainer(ds: ImageSet, p: Params, channels_last: bool = True, fused: bool = True,
                   compile_nets: bool = False, device: torch.device = CPU) -> GanTrainer:
    """train_gan's trainer on `ds`; `channels_last=False` / `fused=False` undo those two settings to measure them."""
    cfg = GanConfig(len(ds.class_names), ds.x.shape[-1], ds.x.shape[1], p.gan.z_dim, p.gan.g_width, p.gan.d_width,
                    p.gan.arch)
    real = BalancedBatches(to_float(ds.x).to(device), torch.as_tensor(np.array(ds.y)), cfg.n_classes)
    trainer = GanTrainer(cfg, GanTrainConfig.from_params(p.gan), real, device)
    if not channels_last:
        trainer.memory_format = torch.contiguous_format
        for net in (trainer.g_net, trainer.d_net, trainer.g_ema):
            net.to(memory_format=torch.contiguous_format)
    if not fused:
        for opt in (trainer.opt_g, trainer.opt_d):
            for group in opt.param_groups:
                group["fused"] = False
    if compile_nets:
        trainer.g_net = torch.compile(trainer.g_net)
        trainer.d_net = torch.compile(trainer.d_net)
    return trainer


def ganaug_runner(trainer: GanTrainer) -> Callable[[int], None]:
    """`n` steps of train_gan's loop body: a step, its statistics summed as tensors, read every 10 steps."""
    def run(n: int) -> None:
        sums: dict[str, torch.Tensor] = {}
        for i in range(n):
            for k, v in trainer.train_step().items():
                sums[k] = sums.get(k, 0.0) + v
            if (i + 1) % 10 == 0:
                means = {k: float(v) / 10 for k, v in sums.items()}  # what Curves logs
                sums = {k: 0.0 for k in means}
    return run


def ref_runner(loop: ReferenceLoop) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            loop.step()
    return run


def with_threads(threads: int, fn: Callable[[int], None]) -> Callable[[int], None]:
    def run(n: int) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            fn(n)
        finally:
            torch.set_num_threads(before)
    return run


# ---------------------------------------------------------------- alternating timed rounds

def alternate(runners: dict[str, Callable[[int], None]], units: int, images_per_unit: int, rounds: int,
              warmup: int = 1) -> dict[str, float]:
    """Median images/s of every runner over `rounds` rounds of `units` calls each, the order rotating per round."""
    names = list(runners)
    for name in names:
        runners[name](warmup)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[name](units)
            rates[name].append(units * images_per_unit / (time.perf_counter() - t0))
    return {n: statistics.median(v) for n, v in rates.items()}


# ---------------------------------------------------------------- the measurements

@dataclass
class Setup:
    p: Params
    ds: ImageSet  # the default target shots (the GAN's and the fine-tune's training set)
    work: Path
    rounds: int
    gan_steps: int
    synth_per_class: int
    ft_steps: int
    threads: int  # what the stages use (ganaug.train.runtime.configure_threads on the CPU)
    default_threads: int  # torch's own default in a fresh process: what a plain loop gets


def stage_threads() -> int:
    """The thread count `ganaug.train.runtime.configure_threads` gives a CPU stage here, without keeping it set."""
    before = torch.get_num_threads()
    n = configure_threads(CPU)
    torch.set_num_threads(before)
    return n


def macs_per_image(g_net: nn.Module, d_net: nn.Module, cfg: GanConfig) -> int:
    """Multiply-adds of one G forward plus one D forward for a single image (convolutions and linear layers)."""
    total = 0

    def hook(module: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total
        w = module.weight
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel meets the whole kernel
            total += _inp[0].numel() * w.shape[1] * w.shape[2] * w.shape[3]
        elif isinstance(module, nn.Conv2d):
            total += out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        elif isinstance(module, nn.Linear):
            total += out.numel() * w.shape[1]

    layers = [m for net in (g_net, d_net) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    was = [g_net.training, d_net.training]
    g_net.eval(), d_net.eval()
    try:
        with torch.no_grad():
            y = torch.zeros(1, dtype=torch.long)
            d_net(g_net(torch.zeros(1, cfg.z_dim), y), y)
    finally:
        for h in handles:
            h.remove()
        g_net.train(was[0]), d_net.train(was[1])
    return total


def measure_gan(s: Setup, compile_nets: bool) -> dict:
    trainer = ganaug_trainer(s.ds, s.p)
    cfg, n, d = trainer.g_net.cfg, s.threads, s.default_threads
    target = n_params(trainer.g_net, trainer.d_net)
    ref = ReferenceLoop(s.ds, cfg, target, s.p.gan.batch_size)
    bf16 = s.p.model_copy(update={"gan": s.p.gan.model_copy(update={"precision": "bf16"})})

    def reference(lean: bool = False) -> Callable[[int], None]:
        return ref_runner(ReferenceLoop(s.ds, cfg, target, s.p.gan.batch_size, lean=lean))

    labels = {  # key -> row label
        "ganaug": f"ganaug, {n} thread(s) (as the stages run it, gan.precision={s.p.gan.precision})",
        "reference": f"reference, {d} thread(s) (torch's default)",
        "reference_same_threads": f"reference, {n} thread(s)",
        "ganaug_bf16": f"ganaug, {n} thread(s), gan.precision=bf16",
        "reference_lean": f"reference, {n} thread(s), data as tensors, no .item()",
        "ganaug_nchw": f"ganaug, {n} thread(s), without channels_last",
        "ganaug_unfused": f"ganaug, {n} thread(s), without fused Adam",
        "ganaug_1_thread": "ganaug, 1 thread",
        "reference_1_thread": "reference, 1 thread",
        "ganaug_bf16_1_thread": "ganaug, 1 thread, gan.precision=bf16",
        "ganaug_compile": f"ganaug, {n} thread(s), torch.compile",
        "plain_loop_ganaug_nets": f"the reference loop on ganaug's G and D, {n} thread(s)",
    }
    runners = {"ganaug": with_threads(n, ganaug_runner(trainer)), "reference": with_threads(d, ref_runner(ref))}
    if d != n:
        runners["reference_same_threads"] = with_threads(n, reference())
    runners["ganaug_bf16"] = with_threads(n, ganaug_runner(ganaug_trainer(s.ds, bf16)))
    runners["reference_lean"] = with_threads(n, reference(lean=True))
    ganaug_nets = (build_generator(cfg).train(), build_discriminator(cfg).train())  # NCHW, as a plain loop has them
    runners["plain_loop_ganaug_nets"] = with_threads(
        n, ref_runner(ReferenceLoop(s.ds, cfg, target, s.p.gan.batch_size, nets=ganaug_nets)))
    runners["ganaug_nchw"] = with_threads(n, ganaug_runner(ganaug_trainer(s.ds, s.p, channels_last=False)))
    runners["ganaug_unfused"] = with_threads(n, ganaug_runner(ganaug_trainer(s.ds, s.p, fused=False)))
    if n > 1:
        runners["ganaug_1_thread"] = with_threads(1, ganaug_runner(ganaug_trainer(s.ds, s.p)))
        runners["reference_1_thread"] = with_threads(1, reference())
        runners["ganaug_bf16_1_thread"] = with_threads(1, ganaug_runner(ganaug_trainer(s.ds, bf16)))
    out = {"params_ganaug": target, "params_reference": n_params(ref.g_net, ref.d_net), "threads": n,
           "default_threads": d, "batch_size": s.p.gan.batch_size, "image_size": s.ds.x.shape[-1],
           "precision": s.p.gan.precision,
           "macs_ganaug": macs_per_image(trainer.g_net, trainer.d_net, cfg),
           "macs_reference": macs_per_image(ref.g_net, ref.d_net, cfg)}
    if compile_nets:
        out["compile"] = with_threads_call(n, compile_cost, s)
        if "error" not in out["compile"]:
            runners["ganaug_compile"] = with_threads(n, out["compile"].pop("runner"))
    rates = alternate(runners, s.gan_steps, s.p.gan.batch_size, s.rounds)
    rates.setdefault("reference_same_threads", rates["reference"])
    out["rates"] = rates  # by key
    out["images_per_s"] = {labels[k]: v for k, v in rates.items() if k in runners}
    out["ratio_as_run"] = rates["ganaug"] / rates["reference"]
    out["ratio_same_threads"] = rates["ganaug"] / rates["reference_same_threads"]
    out["ratio_bf16"] = rates["ganaug_bf16"] / rates["reference_same_threads"]
    out["ratio_same_nets"] = rates["ganaug"] / rates["plain_loop_ganaug_nets"]
    return out


def with_threads_call(threads: int, fn: Callable, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def compile_cost(s: Setup) -> dict:
    """Compile the trainer's G and D; the seconds of its first steps (compilation) and a runner for the rest."""
    try:
        trainer = ganaug_trainer(s.ds, s.p, compile_nets=True)
        run = ganaug_runner(trainer)
        t0 = time.perf_counter()
        run(3)  # the shapes a step sees (D on 2B and B images, G on B) are compiled in the first steps
        return {"first_3_steps_s": round(time.perf_counter() - t0, 1), "runner": run}
    except Exception as exc:  # inductor needs a C++ compiler and may fail on a platform: report, do not crash
        return {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"}


def reference_synthesize(g_net: RefGenerator, n_classes: int, per_class: int, z_dim: int, out: Path) -> None:
    """Generate with the reference G in batches of 256 and write one PNG per image (PIL defaults)."""
    g_net.eval()
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    with torch.no_grad():
        x = torch.cat([g_net(torch.randn(len(labels[i:i + 256]), z_dim), labels[i:i + 256])
                       for i in range(0, len(labels), 256)])
    imgs = to_uint8(x)
    for i, (img, k) in enumerate(zip(imgs, labels.tolist())):
        (out / str(k)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(out / str(k) / f"{i}.png")


def measure_synthesis(s: Setup) -> dict:
    trainer = ganaug_trainer(s.ds, s.p)
    gan_path = s.work / "models/gan.pt"
    export_model(trainer, trainer.g_net.cfg, s.ds.class_names, s.p.gan, gan_path)
    ref_g, _ = reference_nets(trainer.g_net.cfg, n_params(trainer.g_net, trainer.d_net))
    synth = s.p.synth.model_copy(update={"per_class": s.synth_per_class})
    k, n, d = len(s.ds.class_names), s.threads, s.default_threads

    def ganaug(calls: int) -> None:
        for _ in range(calls):
            synthesize(gan_path, synth, s.work / "synthetic", s.work / "samples.png", CPU)

    def reference(calls: int) -> None:
        for _ in range(calls):
            shutil.rmtree(s.work / "ref_synthetic", ignore_errors=True)
            reference_synthesize(ref_g, k, s.synth_per_class, s.p.gan.z_dim, s.work / "ref_synthetic")

    runners = {f"ganaug `synthesize`, {n} thread(s) (as the stage runs it)": with_threads(n, ganaug),
               f"reference, {d} thread(s) (torch's default)": with_threads(d, reference)}
    if d != n:
        runners[f"reference, {n} thread(s)"] = with_threads(n, reference)
    rates = alternate(runners, 1, k * s.synth_per_class, s.rounds)
    return {"images": k * s.synth_per_class, "images_per_s": rates}


def reference_finetune(clf: Path, cfg: ClassifierConfig, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                       steps: int, batch: int, lr: float, weight_decay: float) -> None:
    """A minimal fine-tuning loop: DataLoader batches, AdamW, cross-entropy, `.item()` every step."""
    model = build_classifier(cfg)
    model.load_state_dict(torch.load(clf, map_location="cpu", weights_only=True)["state_dict"])
    model.reset_head(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True)
    model.train()
    done, log = 0, []
    while done < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.append(loss.item())
            done += 1
            if done == steps:
                return


def measure_finetune(s: Setup) -> dict:
    cfg = ClassifierConfig(s.p.classifier.arch, 5, s.ds.x.shape[1], s.ds.x.shape[-1], s.p.classifier.width)
    torch.manual_seed(0)
    clf = s.work / "models/classifier.pt"
    save_classifier(clf, build_classifier(cfg), cfg, [str(i) for i in range(5)], {})
    ft = s.p.finetune.model_copy(update={"steps": s.ft_steps})
    x, y = to_float(s.ds.x), torch.as_tensor(np.array(s.ds.y), dtype=torch.long)
    n, d, policy = s.threads, s.default_threads, s.p.finetune.augment

    def ganaug(augment: str) -> Callable[[int], None]:
        def run(calls: int) -> None:
            for _ in range(calls):
                finetune(clf, s.ds, ft, CPU, augment=augment)
        return run

    def reference(calls: int) -> None:
        for _ in range(calls):
            reference_finetune(clf, cfg, x, y, len(s.ds.class_names), ft.steps, ft.batch_size, ft.lr, ft.weight_decay)

    runners = {f"ganaug `finetune`, {n} thread(s) (as the stage runs it)": with_threads(n, ganaug("none")),
               f"reference, {d} thread(s) (torch's default)": with_threads(d, reference)}
    if d != n:
        runners[f"reference, {n} thread(s)"] = with_threads(n, reference)
    runners[f"ganaug `finetune --augment {policy}`, {n} thread(s)"] = with_threads(n, ganaug(policy))
    rates = alternate(runners, 1, ft.steps * ft.batch_size, s.rounds)
    return {"steps": ft.steps, "batch_size": ft.batch_size, "images_per_s": rates}


def measure_process(cmd: list[str], cwd: Path) -> dict:
    """Wall seconds and peak RSS (MiB, the largest process of the tree) of `cmd`, run under a small wrapper."""
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:]); s = time.perf_counter() - t; "
               "print(json.dumps({'rc': r.returncode, 'seconds': s, "
               "'max_rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=cwd, env=tool_env(), capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {k: round(v, 1) for k, v in result.items() if k != "rc"}


def measure_repro(work: Path, overrides: dict) -> dict:
    project = make_project(work / "project", overrides)
    dvc = [sys.executable, "-m", "dvc", "repro"]
    return {"first": measure_process(dvc, project), "no_change": measure_process(dvc, project)}


# ---------------------------------------------------------------- the report

def _rates_table(header: str, rates: dict[str, float]) -> str:
    first = next(iter(rates.values()))
    return markdown_table([header, "images/s", "vs first row"], [[n, f"{v:.0f}", f"{v / first:.2f}x"] for n, v in rates.items()])


def bought(gan: dict, default_steps: int) -> list[str]:
    """One line per speed-up tried: its ratio of images/s, measured in the same alternating rounds."""
    rates, n = gan["rates"], gan["threads"]
    lines = [f"- `gan.precision: bf16` (bfloat16 autocast of G and D): {rates['ganaug_bf16'] / rates['ganaug']:.2f}x; "
             f"ganaug / reference {gan['ratio_bf16']:.2f}x at the same thread count"]
    if "ganaug_1_thread" in rates:
        lines.append(f"- {n} threads instead of 1 (torch's default, `configure_threads` keeps it): "
                     f"{rates['ganaug'] / rates['ganaug_1_thread']:.2f}x (the reference loop: "
                     f"{rates['reference_same_threads'] / rates['reference_1_thread']:.2f}x); at 1 thread "
                     f"ganaug / reference is {rates['ganaug_1_thread'] / rates['reference_1_thread']:.2f}x "
                     f"({rates['ganaug_bf16_1_thread'] / rates['reference_1_thread']:.2f}x with bf16)")
    lines.append(f"- `channels_last` (nets and images): {rates['ganaug'] / rates['ganaug_nchw']:.2f}x")
    lines.append(f"- fused Adam (`fused=True`): {rates['ganaug'] / rates['ganaug_unfused']:.2f}x")
    comp = gan.get("compile")
    if comp is not None and "error" in comp:
        lines.append(f"- `torch.compile`: failed here ({comp['error']})")
    elif comp is not None:
        steady = rates["ganaug_compile"]
        saved = gan["batch_size"] * (1 / rates["ganaug"] - 1 / steady)  # seconds saved per step
        pays = f"pays back after {comp['first_3_steps_s'] / saved:.0f} steps" if saved > 0 else "never pays back"
        lines.append(f"- `torch.compile` (G and D): {steady / rates['ganaug']:.2f}x once compiled; compiling took "
                     f"{comp['first_3_steps_s']} s (its first 3 steps), so it {pays} (default `gan.steps`: {default_steps})")
    lines.append(f"- data kept as one tensor and no `.item()` per step, in the reference loop: "
                 f"{rates['reference_lean'] / rates['reference_same_threads']:.2f}x (ganaug's loop already does both)")
    return lines


def render(r: dict, command: str) -> str:
    gan, syn, ft = r["gan"], r["synthesis"], r["finetune"]
    ips, rates = gan["images_per_s"], gan["rates"]
    same = "same thread count" if gan["threads"] == gan["default_threads"] else f"{gan['threads']} thread(s) each"
    out = [
        "## Throughput: how fast? (`bench/throughput.py`)", "",
        f"- Command: `{command}`",
        f"- Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on: {machine()}; "
        f"load average at the start {r['load_before']:.1f}, at the end {r['load_after']:.1f}",
        f"- Every number: median over {r['rounds']} alternating timed rounds in one process "
        f"(GAN: {r['gan_steps']} steps a round, warm-up first). The stages run with {gan['threads']} torch thread(s) on a CPU "
        f"(`ganaug.train.runtime.configure_threads`, `GANAUG_THREADS` overrides); a plain PyTorch loop gets torch's default, "
        f"{gan['default_threads']} here.", "",
        f"**GAN training, ganaug / reference: {gan['ratio_same_threads']:.2f}x with ganaug's default "
        f"`gan.precision: {gan['precision']}`, {gan['ratio_bf16']:.2f}x with `gan.precision: bf16`** ({same}; "
        f"as each runs by default: {gan['ratio_as_run']:.2f}x). Real images per second; batch {gan['batch_size']}, {gan['image_size']}x{gan['image_size']} "
        f"images; parameters ganaug {gan['params_ganaug']:,} vs reference {gan['params_reference']:,}; multiply-adds per image "
        f"(one G and one D forward) ganaug {gan['macs_ganaug'] / 1e6:.1f} M vs reference {gan['macs_reference'] / 1e6:.1f} M.", "",
        f"The loop alone, on the same nets: ganaug's step / the reference loop running ganaug's G and D "
        f"(BCE, `DataLoader`, `.item()`, NCHW; no DiffAugment or EMA): **{gan['ratio_same_nets']:.2f}x**.", "",
        _rates_table("GAN training step", ips),
    ]
    out += ["", "What each setting bought (ganaug's step unless named):", "", *bought(gan, r["default_gan_steps"])]
    out += ["", _rates_table(f"synthesis of {syn['images']} images, PNGs included", syn["images_per_s"])]
    out += ["", _rates_table(f"fine-tuning, {ft['steps']} steps of batch {ft['batch_size']}", ft["images_per_s"])]
    if "repro" in r:
        first, again = r["repro"]["first"], r["repro"]["no_change"]
        out += ["", f"Default `dvc repro` (params.yaml as in the project, in a fresh copy; stages as they run by default): "
                    f"{first['seconds']:.0f} s wall, peak RSS {first['max_rss_mib']:.0f} MiB (the largest process); "
                    f"re-run with nothing changed: {again['seconds']:.1f} s."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- command line

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per comparison")
    ap.add_argument("--gan-steps", type=int, default=15, help="GAN steps per round")
    ap.add_argument("--synth-per-class", type=int, default=200, help="images per class per synthesis round")
    ap.add_argument("--ft-steps", type=int, default=20, help="fine-tune steps per round")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override params.yaml for the measurements and the repro, e.g. --set gan.g_width=32")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes a while)")
    ap.add_argument("--no-repro", action="store_true", help="skip the end-to-end `dvc repro`")
    ap.add_argument("--out", type=Path, default=DOC, help="markdown file whose `throughput` section is (re)written")
    ap.add_argument("--raw", type=Path, help="write the numbers as JSON here too")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    overrides = parse_overrides(args.overrides)
    p = parse_params(deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides))
    work = Path(tempfile.mkdtemp(prefix="ganaug-throughput-"))
    result = {"rounds": args.rounds, "gan_steps": args.gan_steps, "default_gan_steps": p.gan.steps,
              "load_before": os.getloadavg()[0]}
    try:
        prepare(p.data, work / "data/prepared")
        s = Setup(p, load_prepared(work / "data/prepared/target_train.npz"), work, args.rounds, args.gan_steps,
                  args.synth_per_class, args.ft_steps, stage_threads(), torch.get_num_threads())
        for name, fn in (("gan", lambda: measure_gan(s, compile_nets=not args.no_compile)),
                         ("synthesis", lambda: measure_synthesis(s)), ("finetune", lambda: measure_finetune(s))):
            result[name] = fn()
            print(f"throughput: {name} {json.dumps(result[name]['images_per_s'])}", flush=True)
        if not args.no_repro:
            result["repro"] = measure_repro(work, overrides)
            print(f"throughput: repro {result['repro']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()[0]
    body = render(result, command_line())
    publish(args.out, "throughput", body, args.raw, result)
    return result


if __name__ == "__main__":
    main()
