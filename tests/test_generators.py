"""Generator kinds: the one loader, the kind recorded in a checkpoint, and a new kind through synthesis (real torch)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from ganaug.config.errors import UserError, one_line
from ganaug.config.params import DaganParams, GanParams, RepairParams, SynthParams
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, save_prepared, select_classes
from ganaug.io.imagefolder import MANIFEST_COLUMNS, read_manifest
from ganaug.nets.generators import KINDS, Kind, KindError, load_sampler, register
from ganaug.nets.sampling import SampleOptions, Sampler, Samples
from ganaug.tools.synthesis import synthesize
from ganaug.train.gan import check_gan_checkpoint, train_gan
from pipeline.cli import main as cli
from stages.train_dagan import write_dagan
from stages.train_repair import write_repair

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shots() -> ImageSet:
    """3 classes x 4 digits of 16x16."""
    ds = select_classes(load_digits_set(LoadOptions(16, 1)), [0, 1, 2])
    return ds.subset(np.concatenate([np.flatnonzero(ds.y == k)[:4] for k in range(3)]))


# ---------------------------------------------------------------- a conditioned kind defined here

@dataclass(frozen=True)
class ShiftDraw:
    """Each image is a random shot of its class (drawn from `g`), shifted right by `dx` pixels."""
    dx: int

    def __call__(self, labels: torch.Tensor, g: torch.Generator, shots: Optional[ImageSet]) -> Samples:
        parents = np.array([self.pick(shots, int(k), g) for k in labels], dtype=np.int64)  # (N,)
        images = np.roll(shots.x[parents], self.dx, axis=-1)  # (N, C, S, S)
        return Samples(images, {"parent_shot": parents, "strength": np.full(len(parents), float(self.dx))})

    @staticmethod
    def pick(shots: ImageSet, label: int, g: torch.Generator) -> int:
        idx = np.flatnonzero(shots.y == label)
        return int(idx[torch.randint(len(idx), (1,), generator=g)])


def load_shift(ckpt: dict, opts: SampleOptions, path: Path) -> Sampler:
    return Sampler(ShiftDraw(int(ckpt["dx"])), list(ckpt["class_names"]), int(ckpt["channels"]), int(ckpt["image_size"]))


def save_shift(path: Path, shots: ImageSet) -> Path:
    """A checkpoint of the `shift` kind, as its trainer would write it."""
    torch.save({"kind": "shift", "class_names": shots.class_names, "channels": 1, "image_size": 16,
                "dx": torch.tensor(1)}, path)
    return path


@pytest.fixture
def shift_kind():
    register("shift", Kind(load_shift, conditioned=True))
    yield "shift"
    del KINDS["shift"]


# ---------------------------------------------------------------- every registered kind

def save_gan(path: Path, shots: ImageSet) -> Path:
    """A GAN trained for 2 steps, written by the GAN trainer."""
    p = GanParams(steps=2, z_dim=8, g_width=8, d_width=8, batch_size=6, ema_start=1)
    train_gan(shots, p, path, path.parent / "ckpt", CPU)
    return path


def save_repair(path: Path, shots: ImageSet) -> Path:
    """A repair model trained for 2 steps (on the shots themselves), written by its stage's core."""
    write_repair("repair", shots, shots.class_names, RepairParams(width=8, steps=2, batch_size=6), path,
                 path.parent / "ckpt", CPU)
    return path


def save_dagan(path: Path, shots: ImageSet) -> Path:
    """A DAGAN trained for 2 steps (on pairs of the shots themselves), written by its stage's core."""
    write_dagan("dagan", shots, shots, DaganParams(z_dim=4, g_width=8, d_width=8, steps=2, batch_size=6), path,
                path.parent / "ckpt", CPU)
    return path


CHECKPOINTS: dict[str, Callable[[Path, ImageSet], Path]] = {"gan": save_gan, "repair": save_repair,
                                                           "dagan": save_dagan}  # one writer per kind


def test_every_registered_kind_has_a_checkpoint_writer_here():
    assert set(CHECKPOINTS) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(CHECKPOINTS))
def test_every_kind_round_trips_through_the_one_loader(kind, shots, tmp_path):
    path = CHECKPOINTS[kind](tmp_path / f"{kind}.pt", shots)
    assert torch.load(path, weights_only=True)["kind"] == kind
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    draws = []
    for batch_size in (2, 256):
        s = load_sampler(path, SampleOptions(batch_size=batch_size), expect=kind)
        assert (s.kind, s.source, s.class_names, s.n_classes) == (kind, path, shots.class_names, 3)
        assert s.conditioned == KINDS[kind].conditioned
        draws.append(s(labels, torch.Generator().manual_seed(4), shots))
    for out in draws:
        assert out.images.dtype == np.uint8 and out.images.shape == (6, 1, 16, 16)
        assert all(len(v) == 6 for v in out.columns.values())
    assert np.array_equal(draws[0].images, draws[1].images)  # same seed, any batch size: the same images
    other = s(labels, torch.Generator().manual_seed(5), shots)
    assert not np.array_equal(other.images, draws[0].images)


def test_a_gan_checkpoint_without_a_kind_loads_as_the_gan(shots, tmp_path):
    path = save_gan(tmp_path / "gan.pt", shots)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["kind"]
    torch.save(ckpt, tmp_path / "old.pt")
    labels = torch.arange(3).repeat_interleave(2)
    new, old = (load_sampler(p, expect="gan") for p in (path, tmp_path / "old.pt"))
    assert old.kind == "gan" and not old.conditioned
    assert np.array_equal(new(labels, torch.Generator().manual_seed(0)).images,
                          old(labels, torch.Generator().manual_seed(0)).images)


def test_a_checkpoint_of_another_kind_is_refused_in_one_line(shift_kind, shots, tmp_path):
    path = save_shift(tmp_path / "shift.pt", shots)
    with pytest.raises(KindError) as err:
        load_sampler(path, expect="gan")
    msg = str(err.value)
    assert msg == one_line(msg) and str(path) in msg and "'shift'" in msg and "'gan'" in msg
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "config": {}, "generator": {}, "discriminator": {}}, tmp_path / "init.pt")
    with pytest.raises(KindError, match="'shift' generator checkpoint where a 'gan' one is needed"):
        check_gan_checkpoint(tmp_path / "init.pt", GanParams())  # gan.init=checkpoint


def test_an_unregistered_kind_is_refused_naming_the_registered_ones(tmp_path):
    torch.save({"kind": "vae"}, tmp_path / "vae.pt")
    with pytest.raises(KindError, match=r"vae.pt: unknown generator kind 'vae' \(registered: gan"):
        load_sampler(tmp_path / "vae.pt")


# ---------------------------------------------------------------- a new kind through synthesis and the CLI

def test_a_conditioned_kind_registered_here_runs_through_synthesis(shift_kind, shots, tmp_path):
    path = save_shift(tmp_path / "shift.pt", shots)
    df = synthesize(path, SynthParams(per_class=3, seed=1), tmp_path / "s", tmp_path / "s.png", CPU, real=shots)
    on_disk = read_manifest(tmp_path / "s")
    assert list(on_disk.columns) == MANIFEST_COLUMNS + ["parent_shot", "strength"] == list(df.columns)
    assert on_disk["label"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and set(on_disk["strength"]) == {1.0}
    for row in on_disk.itertuples():
        assert shots.y[row.parent_shot] == row.label
        with Image.open(tmp_path / "s" / row.path) as img:
            assert np.array_equal(np.asarray(img)[None], np.roll(shots.x[row.parent_shot], 1, axis=-1))
    again = synthesize(path, SynthParams(per_class=3, seed=1), tmp_path / "t", tmp_path / "t.png", CPU, real=shots)
    assert again["parent_shot"].tolist() == df["parent_shot"].tolist()  # one seeded stream


def test_a_conditioned_kind_without_shots_is_refused_in_one_line(shift_kind, shots, tmp_path):
    path = save_shift(tmp_path / "shift.pt", shots)
    with pytest.raises(UserError, match="conditioned on real shots"):
        synthesize(path, SynthParams(per_class=2), tmp_path / "s", tmp_path / "s.png", CPU)
    assert not (tmp_path / "s").exists()


def test_ganaug_sample_takes_shots_for_a_conditioned_kind(shift_kind, shots, tmp_path, capsys):
    path, npz = save_shift(tmp_path / "shift.pt", shots), tmp_path / "shots.npz"
    save_prepared(npz, shots)
    assert cli(["sample", "--gan", str(path), "--out", str(tmp_path / "none"), "--per-class", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"^error: .*shift.pt: a 'shift' generator is conditioned .*--shots", err)
    assert cli(["sample", "--gan", str(path), "--shots", str(npz), "--out", str(tmp_path / "out"),
                "--per-class", "2"]) == 0
    df = read_manifest(tmp_path / "out")
    assert len(df) == 6 and (shots.y[df["parent_shot"]] == df["label"]).all()
