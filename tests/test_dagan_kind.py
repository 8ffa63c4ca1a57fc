"""The generator kind `dagan`: nets, sampler, trainer, stage train_dagan, synthesis from it (real torch, tiny)."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression

from ganaug.config.errors import DataError, UserError
from ganaug.config.params import DaganParams, ParamsError, SynthParams, parse_params
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, save_prepared, select_classes, to_float
from ganaug.io.imagefolder import MANIFEST_COLUMNS, read_manifest
from ganaug.nets.dagan import DaganConfig, DaganGenerator, PairDiscriminator
from ganaug.nets.generators import KindError, check_kind_param, checkpoint_path, load_sampler
from ganaug.nets.sampling import SampleOptions
from ganaug.tools.synthesis import synthesize
from ganaug.train.dagan import DaganTrainConfig, PairBatches, train_dagan
from stages.train_dagan import write_dagan

CPU = torch.device("cpu")
# All of this module's tests on one pytest-xdist worker (`make test`: `--dist loadgroup`), so that
# `dagan_path` trains its DAGAN once, not once in each worker that takes one of them.
pytestmark = pytest.mark.xdist_group("dagan_model")
SHOTS = 5  # per target class
TINY = dict(z_dim=8, g_width=8, d_width=8, batch_size=16, checkpoint_every=4, seed=3)


def digits(classes: list[int], per_class: int | None = None) -> ImageSet:
    """Digits of `classes` (16x16 grey), the first `per_class` of each (all when None)."""
    ds = select_classes(load_digits_set(LoadOptions(16, 1)), classes)
    if per_class is None:
        return ds
    return ds.subset(np.concatenate([np.flatnonzero(ds.y == k)[:per_class] for k in range(len(classes))]))


@pytest.fixture(scope="module")
def data() -> dict[str, ImageSet]:
    """Source: digits 0-4; shots: 5 of each of digits 5-9; rest: the other images of 5-9 (the class judge's)."""
    target = digits([5, 6, 7, 8, 9])
    idx = np.concatenate([np.flatnonzero(target.y == k)[:SHOTS] for k in range(5)])
    return {"source": digits([0, 1, 2, 3, 4]), "shots": target.subset(idx),
            "rest": target.subset(np.setdiff1d(np.arange(len(target.y)), idx))}


@pytest.fixture(scope="module")
def dagan_path(data, tmp_path_factory) -> Path:
    """A DAGAN trained briefly on digits 0-4 and adapted on the 5-9 shots, as train_dagan writes it."""
    out = tmp_path_factory.mktemp("dagan") / "dagan.pt"
    p = DaganParams(**{**TINY, "g_width": 16, "d_width": 16, "steps": 100, "adapt_steps": 10, "batch_size": 32})
    write_dagan("dagan", data["source"], data["shots"], p, out, out.parent / "ckpt", CPU)
    return out


def test_nets_keep_the_image_shape():
    for channels in (1, 3):
        cfg = DaganConfig(16, channels, z_dim=4, g_width=8, d_width=8)
        x = torch.rand(5, channels, 16, 16) * 2 - 1
        out = DaganGenerator(cfg)(x, torch.randn(5, 4))
        assert out.shape == x.shape and out.abs().max() <= 1
        assert PairDiscriminator(cfg)(x, out).shape == (5,)


def test_pairs_are_two_different_images_of_one_class_and_an_image_of_another(data):
    shots = data["shots"]
    x, x2, wrong = PairBatches(shots, CPU, "shots").draw(40, torch.Generator().manual_seed(0))
    flat = to_float(shots.x).flatten(1)
    row = lambda im: int(torch.nonzero((flat == im.flatten()).all(1))[0])  # noqa: E731
    for a, b, c in zip(x, x2, wrong):
        assert row(a) != row(b) and shots.y[row(a)] == shots.y[row(b)] != shots.y[row(c)]
    assert len({row(a) for a in x}) > 15 and len({int(shots.y[row(c)]) for c in wrong}) == 5
    with pytest.raises(DataError, match="two images"):
        PairBatches(digits([5, 6], 1), CPU, "shots")


def test_round_trip_through_load_sampler(dagan_path, data):
    sampler = load_sampler(dagan_path, expect="dagan")
    assert (sampler.kind, sampler.conditioned, sampler.class_names) == ("dagan", True, data["shots"].class_names)
    labels = torch.tensor([0, 0, 1, 4, 4, 4])
    out = sampler(labels, torch.Generator().manual_seed(0), data["shots"])
    assert out.images.shape == (6, 1, 16, 16) and out.images.dtype == np.uint8
    assert list(data["shots"].y[out.columns["parent_shot"]]) == labels.tolist()
    assert np.isnan(out.columns["strength"]).all()
    with pytest.raises(UserError, match="conditioned"):
        sampler(labels, torch.Generator().manual_seed(0))
    with pytest.raises(KindError, match="'dagan' generator checkpoint where a 'gan'"):
        load_sampler(dagan_path, expect="gan")
    with pytest.raises(UserError, match="ema or raw"):
        load_sampler(dagan_path, SampleOptions(weights="average"))


def test_images_do_not_depend_on_the_batch_size(dagan_path, data):
    labels, shots = torch.arange(5).repeat(3), data["shots"]
    a, b = (load_sampler(dagan_path, SampleOptions(batch_size=n))(labels, torch.Generator().manual_seed(1), shots)
            for n in (2, 256))
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, load_sampler(dagan_path)(labels, torch.Generator().manual_seed(2), shots).images)


def test_variations_are_new_images_that_keep_their_parents_class(dagan_path, data):
    shots = data["shots"]
    labels = torch.arange(5).repeat_interleave(8 * SHOTS)  # 8 variations of each shot
    out = load_sampler(dagan_path)(labels, torch.Generator().manual_seed(0), shots)
    parents = shots.x[out.columns["parent_shot"]]
    gap = np.abs(out.images.astype(float) - parents).mean(axis=(1, 2, 3))  # per image, in 0..255
    assert (gap > 2).all(), "a variation is (nearly) a pixel copy of its parent shot"
    assert len({im.tobytes() for im in out.images}) == len(out.images)
    rest = data["rest"]
    clf = LogisticRegression(max_iter=300).fit(rest.x.reshape(len(rest), -1) / 255.0, rest.y)
    pred, y = clf.predict(out.images.reshape(len(labels), -1) / 255.0), labels.numpy()
    keep = (pred == y).mean()  # a variation of a class-k shot is called k ...
    cross = np.mean([(pred[y != k] == k).mean() for k in range(5)])  # ... far more often than one of another class
    assert keep > 0.5 and keep > 4 * cross, (keep, cross)


def test_resume_is_bit_exact(data, tmp_path):
    tc = DaganTrainConfig(**{**TINY, "steps": 10, "adapt_steps": 4})
    ckpt = tmp_path / "ckpt.pt"
    stopped, s = train_dagan(data["source"], data["shots"], tc, CPU, ckpt, stop_after=9)
    assert s["stopped"] and ckpt.is_file()
    resumed, s = train_dagan(data["source"], data["shots"], tc, CPU, ckpt)
    assert s["resumed_from"] == 8 and not ckpt.exists()
    straight, _ = train_dagan(data["source"], data["shots"], tc, CPU, tmp_path / "other.pt")
    for a, b in ((resumed.g_ema, straight.g_ema), (resumed.g_net, straight.g_net), (resumed.d_net, straight.d_net)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_placeholder_when_another_kind_is_selected(tmp_path):
    out = tmp_path / "models" / "generators" / "dagan.pt"
    s = write_dagan("repair", None, None, DaganParams(), out, tmp_path / "ckpt", CPU)  # no source set needed
    assert s["placeholder"] and not (tmp_path / "ckpt").exists()  # no training: no checkpoint was started
    with pytest.raises(UserError) as err:
        load_sampler(out, expect="dagan")
    assert str(err.value) == f"{out} is a placeholder: set synth.kind: dagan and run dvc repro"


def test_the_stage_with_the_default_kind_needs_no_source_and_trains_nothing(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("data/restored").mkdir(parents=True)
    save_prepared(Path("data/restored/target_train.npz"), data["shots"])  # no data/prepared/source.npz at all
    Path("params.yaml").write_text(yaml.safe_dump({"dagan": {"steps": 100000}}))
    importlib.import_module("stages.train_dagan").main()
    assert "no DAGAN trained -> placeholder models/generators/dagan.pt" in capsys.readouterr().out
    with pytest.raises(UserError, match="dagan.pt is a placeholder: set synth.kind: dagan"):
        load_sampler("models/generators/dagan.pt")


def test_synthesize_from_dagan_writes_the_parent_shot(dagan_path, data, tmp_path):
    p = SynthParams(per_class=3, kind="dagan")
    df = synthesize(dagan_path, p, tmp_path / "syn", tmp_path / "s.png", CPU, data["shots"], expect="dagan")
    on_disk = read_manifest(tmp_path / "syn")
    assert len(on_disk) == 15 and list(on_disk.columns) == MANIFEST_COLUMNS + ["parent_shot", "strength"]
    assert on_disk["strength"].isna().all()
    assert list(data["shots"].y[on_disk["parent_shot"].to_numpy()]) == list(df["label"])
    assert checkpoint_path("dagan").as_posix() == "models/generators/dagan.pt"


def test_dagan_params_are_checked_naming_the_key():
    assert check_kind_param("dagan") == "dagan" and parse_params({}).dagan == DaganParams()
    for raw, fragment in [({"diffaug": "color,warp"}, "dagan.diffaug:"), ({"ema_decay": 1.0}, "dagan.ema_decay:"),
                          ({"steps": 0}, "dagan.steps:")]:
        with pytest.raises(ParamsError, match=fragment):
            parse_params({"dagan": raw})
