"""Generator kinds and the one loader of their checkpoints.

A generator checkpoint is a dict of plain tensors and containers (it loads with
`torch.load(..., weights_only=True)`) whose `kind` key names its entry in KINDS;
a checkpoint without one (a `models/gan.pt` written before kinds were recorded)
is a `gan`. `load_sampler` reads the file, looks its kind up and lets the
kind's loader build the `Sampler` (`ganaug/nets/sampling.py`) that synthesis,
the sample grids and `ganaug sample` draw from.

A kind is its net (with a loader: checkpoint dict, `SampleOptions`, path ->
`Sampler`), its trainer (which writes `"kind": <name>` into the checkpoint),
its params section, its DVC stage and one entry here. A conditioned kind
draws from the real shots, which every caller then has to give.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from ganaug.config.errors import UserError
from ganaug.config.params import ParamsError
from ganaug.nets import dagan, gan, repair
from ganaug.nets.sampling import SampleOptions, Sampler

LoadKind = Callable[[dict, SampleOptions, Path], Sampler]  # checkpoint dict, options, its path -> Sampler
UNMARKED_KIND = gan.KIND  # the kind of a checkpoint without a `kind` key
GENERATOR_DIR = Path("models/generators")  # the checkpoints of every kind but the GAN, <kind>.pt


class KindError(UserError):
    """A generator checkpoint of another kind than the one asked for, or of no registered kind."""


@dataclass(frozen=True)
class Kind:
    load: LoadKind
    conditioned: bool  # draws from the real shots: needs them at every call


KINDS: dict[str, Kind] = {
    gan.KIND: Kind(gan.load_sampler, conditioned=False),  # the class-conditional GAN (train_gan -> models/gan.pt)
    repair.KIND: Kind(repair.load_sampler, conditioned=True),  # damaged-and-repaired shots (train_repair)
    dagan.KIND: Kind(dagan.load_sampler, conditioned=True),  # shots varied by a pair-trained GAN (train_dagan)
}


def checkpoint_path(kind: str) -> Path:
    """Where the pipeline keeps a kind's checkpoint: `models/gan.pt` for the GAN, else `models/generators/<kind>.pt`."""
    return Path("models/gan.pt") if kind == gan.KIND else GENERATOR_DIR / f"{kind}.pt"


def check_kind_param(kind: str, key: str = "synth.kind") -> str:
    """`kind` if it is registered; ParamsError naming `key` and the registered kinds otherwise."""
    if kind not in KINDS:
        raise ParamsError(f"params.yaml: {key}: unknown generator kind {kind!r} (registered: {', '.join(KINDS)})")
    return kind


def placeholder(kind: str, selected: str) -> dict:
    """The checkpoint a kind's stage writes at once when `synth.kind` is `selected`, another kind."""
    return {"kind": kind, "placeholder": f"synth.kind is {selected!r}, not {kind!r}: nothing was trained"}


def register(name: str, kind: Kind) -> None:
    """Add a kind under `name`; ValueError if the name is taken."""
    if name in KINDS:
        raise ValueError(f"generator kind {name!r} is already registered")
    KINDS[name] = kind


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, read with weights_only=True; UserError if it is missing or not one."""
    if not path.is_file():
        raise UserError(f"{path}: generator checkpoint not found (train_gan writes models/gan.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise UserError(f"{path}: not a generator checkpoint written by ganaug (unreadable with weights_only=True: "
                        f"{exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a generator checkpoint written by ganaug (holds a {type(ckpt).__name__})")
    return ckpt


def checkpoint_kind(ckpt: dict, path: str | Path, expect: Optional[str] = None) -> str:
    """The registered kind of `ckpt`; KindError if it has none or differs from `expect`."""
    kind = ckpt.get("kind", UNMARKED_KIND)
    if kind not in KINDS:
        raise KindError(f"{path}: unknown generator kind {kind!r} (registered: {', '.join(KINDS)})")
    if expect is not None and kind != expect:
        raise KindError(f"{path}: a {kind!r} generator checkpoint where a {expect!r} one is needed")
    return kind


def load_sampler(path: str | Path, opts: SampleOptions = SampleOptions(), expect: Optional[str] = None) -> Sampler:
    """The generator at `path` as a `Sampler`, of the kind its checkpoint records (`expect`: that kind only)."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    kind = checkpoint_kind(ckpt, path, expect)
    if "placeholder" in ckpt:  # what a kind's stage writes when synth.kind selects another kind
        raise UserError(f"{path} is a placeholder: set synth.kind: {kind} and run dvc repro")
    entry = KINDS[kind]
    try:
        sampler = entry.load(ckpt, opts, path)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a usable {kind!r} generator checkpoint ({exc.__class__.__name__}: {exc})") from None
    return replace(sampler, source=path, kind=kind, conditioned=entry.conditioned)
