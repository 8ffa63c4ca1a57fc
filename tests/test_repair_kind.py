"""The generator kind `repair`: shots damaged at random and repaired by a U-Net trained on source images (real torch)."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression

from ganaug.config.errors import UserError, one_line
from ganaug.config.params import ParamsError, RepairParams, SynthParams, parse_params
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, save_prepared, select_classes, to_float
from ganaug.io.imagefolder import MANIFEST_COLUMNS, read_manifest
from ganaug.nets.classifier import ClassifierConfig, build_classifier, save_classifier
from ganaug.nets.generators import KindError, check_kind_param, checkpoint_path, load_sampler
from ganaug.nets.repair import round_robin
from ganaug.nets.sampling import SampleOptions
from ganaug.tools.synthesis import synthesize
from ganaug.train.fit import FitConfig, fit
from stages.train_repair import write_repair

CPU = torch.device("cpu")
# All of this module's tests on one pytest-xdist worker (`make test`: `--dist loadgroup`), so that
# `model` trains its repair model once, not once in each worker that takes one of them.
pytestmark = pytest.mark.xdist_group("repair_model")
TINY = RepairParams(width=8, steps=120, batch_size=32, checkpoint_every=40)
SHOTS = 5  # per target class


@pytest.fixture(scope="module")
def digits() -> tuple[ImageSet, ImageSet, ImageSet]:
    """(source: digits 0-4, shots: 5 of each of digits 5-9, the other images of 5-9) at 16x16."""
    ds = load_digits_set(LoadOptions(16, 1))
    source, target = select_classes(ds, [0, 1, 2, 3, 4]), select_classes(ds, [5, 6, 7, 8, 9])
    idx = np.concatenate([np.flatnonzero(target.y == k)[:SHOTS] for k in range(5)])
    return source, target.subset(idx), target.subset(np.setdiff1d(np.arange(len(target.y)), idx))


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    """A repair model trained by the stage's core on the source digits, and the digits."""
    source, shots, _ = digits
    path = tmp_path_factory.mktemp("repair") / "repair.pt"
    s = write_repair("repair", source, shots.class_names, TINY, path, path.parent / "ckpt", CPU)
    assert not s["placeholder"] and s["steps"] == TINY.steps
    return path


def test_the_kind_round_trips_through_the_one_loader_and_is_refused_as_another(model, digits):
    shots = digits[1]
    ckpt = torch.load(model, weights_only=True)
    assert ckpt["kind"] == "repair" and ckpt["corruptions"] == TINY.corruptions and ckpt["strengths"] == TINY.strengths
    labels = torch.tensor([0, 0, 1, 3, 4, 4, 4])
    draws = [load_sampler(model, SampleOptions(batch_size=b), expect="repair")(labels, torch.Generator().manual_seed(3),
                                                                             shots) for b in (2, 256)]
    assert np.array_equal(draws[0].images, draws[1].images)  # same seed, any batch size: the same images
    assert draws[0].images.dtype == np.uint8 and draws[0].images.shape == (7, 1, 16, 16)
    s = load_sampler(model)
    assert (s.kind, s.conditioned, s.class_names) == ("repair", True, shots.class_names)
    assert not np.array_equal(s(labels, torch.Generator().manual_seed(4), shots).images, draws[0].images)
    with pytest.raises(KindError) as err:
        load_sampler(model, expect="gan")
    assert str(err.value) == one_line(err.value) and "'repair' generator checkpoint where a 'gan'" in str(err.value)


def test_parents_go_round_robin_over_each_class_in_shot_order(model, digits):
    shots = digits[1]
    labels = torch.tensor([2] * 7 + [0] * 2)
    out = load_sampler(model)(labels, torch.Generator().manual_seed(0), shots)
    of2, of0 = np.flatnonzero(shots.y == 2), np.flatnonzero(shots.y == 0)
    assert out.columns["parent_shot"].tolist() == [*of2, *of2[:2], *of0[:2]]
    lo, hi = TINY.strengths
    assert ((out.columns["strength"] >= lo) & (out.columns["strength"] <= hi)).all()
    assert len(set(out.columns["strength"].tolist())) == len(labels)  # drawn per image
    assert round_robin(np.array([1, 1, 1]), np.array([0, 1, 0, 1])).tolist() == [1, 3, 1]


def test_variations_are_no_copies_and_keep_their_parents_class(model, digits):
    """Against a classifier trained on the other digits 5-9: a variation of a class-k shot is called k far more
    often than a variation of a shot of another class is."""
    _, shots, rest = digits
    clf = LogisticRegression(max_iter=300).fit(rest.x.reshape(len(rest), -1) / 255.0, rest.y)
    labels = torch.arange(5).repeat_interleave(4 * SHOTS)
    out = load_sampler(model)(labels, torch.Generator().manual_seed(1), shots)
    parents = shots.x[out.columns["parent_shot"]]
    real = {img.tobytes() for img in shots.x}
    assert not any(img.tobytes() in real for img in out.images)  # the copy check's exact copies: none
    assert (np.abs(out.images.astype(float) - parents).mean(axis=(1, 2, 3)) > 2.0).all()  # every one changed
    pred, y = clf.predict(out.images.reshape(len(labels), -1) / 255.0), labels.numpy()
    keep = (pred == y).mean()
    cross = np.mean([(pred[y != k] == k).mean() for k in range(5)])  # called k, though varied from another class
    assert keep > 0.5 and keep > 4 * cross, (keep, cross)


def test_synthesis_with_the_repair_kind_records_parent_shot_and_strength(model, digits, tmp_path):
    shots = digits[1]
    p = parse_params({"synth": {"per_class": 3, "kind": "repair", "seed": 2}}).synth
    df = synthesize(model, p, tmp_path / "s", tmp_path / "s.png", CPU, real=shots, expect=check_kind_param(p.kind))
    on_disk = read_manifest(tmp_path / "s")
    assert list(on_disk.columns) == MANIFEST_COLUMNS + ["parent_shot", "strength"] == list(df.columns)
    assert (shots.y[on_disk["parent_shot"]] == on_disk["label"]).all() and len(on_disk) == 15
    assert on_disk["strength"].between(*TINY.strengths).all()
    assert checkpoint_path("repair").as_posix() == "models/generators/repair.pt"
    assert checkpoint_path("gan").as_posix() == "models/gan.pt"


def test_the_synthesize_stage_reads_the_kind_it_is_given(model, digits, tmp_path, monkeypatch, capsys):
    """synth.kind: repair -> models/generators/repair.pt (no models/gan.pt here), judged and filtered as usual."""
    shots = digits[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANAUG_DEVICE", "cpu")
    for d in ("models/generators", "models/finetune", "data/restored"):
        Path(d).mkdir(parents=True)
    shutil.copyfile(model, "models/generators/repair.pt")
    save_judge(shots, Path("models/finetune/baseline.pt"))
    save_prepared(Path("data/restored/target_train.npz"), shots)
    Path("params.yaml").write_text(yaml.safe_dump({"synth": {"per_class": 2, "kind": "repair"}}))
    importlib.import_module("stages.synthesize").main()
    assert "from the repair generator" in capsys.readouterr().out
    df = read_manifest(Path("data/synthetic"))
    assert len(df) == 10 and df["parent_shot"].tolist() == [k * SHOTS + j for k in range(5) for j in range(2)]


def save_judge(ds: ImageSet, path: Path) -> None:
    """A tiny classifier fine-tuned on `ds` for 20 steps (stands in for models/finetune/baseline.pt)."""
    cfg = ClassifierConfig(n_classes=len(ds.class_names), image_size=16, width=8)
    torch.manual_seed(0)
    model = build_classifier(cfg)
    fit(model, to_float(ds.x), torch.as_tensor(ds.y), FitConfig(steps=20, batch_size=10, lr=3e-3), CPU)
    save_classifier(path, model.cpu(), cfg, ds.class_names, {})


def test_training_resumes_bit_exactly_after_a_stop(digits, tmp_path):
    source, shots, _ = digits
    p = RepairParams(width=8, steps=12, batch_size=8, checkpoint_every=4)
    small = source.subset(np.arange(64))
    ckpt_dir = tmp_path / "ckpt"
    stopped = write_repair("repair", small, shots.class_names, p, tmp_path / "a.pt", ckpt_dir, CPU, stop_after=6)
    assert stopped["stopped"] and (ckpt_dir / "repair.pt").is_file() and not (tmp_path / "a.pt").exists()
    resumed = write_repair("repair", small, shots.class_names, p, tmp_path / "a.pt", ckpt_dir, CPU)
    assert resumed["resumed_from"] == 4 and not (ckpt_dir / "repair.pt").exists()
    write_repair("repair", small, shots.class_names, p, tmp_path / "b.pt", tmp_path / "other", CPU)
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["weights"] for n in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_another_kind_gets_a_placeholder_at_once_that_says_how_to_select_the_kind(digits, tmp_path):
    path = tmp_path / "models" / "generators" / "repair.pt"
    s = write_repair("gan", None, digits[1].class_names, RepairParams(), path, tmp_path / "ckpt", CPU)  # no source set
    assert s["placeholder"] and not (tmp_path / "ckpt").exists()  # no training: no checkpoint was started
    with pytest.raises(UserError) as err:
        load_sampler(path, expect="repair")
    assert str(err.value) == f"{path} is a placeholder: set synth.kind: repair and run dvc repro"


def test_the_stage_with_the_default_kind_needs_no_source_and_trains_nothing(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("data/restored").mkdir(parents=True)
    save_prepared(Path("data/restored/target_train.npz"), digits[1])  # no data/prepared/source.npz at all
    Path("params.yaml").write_text(yaml.safe_dump({"repair": {"steps": 100000}}))
    importlib.import_module("stages.train_repair").main()
    assert "no repair model trained -> placeholder models/generators/repair.pt" in capsys.readouterr().out
    with pytest.raises(UserError, match="repair.pt is a placeholder: set synth.kind: repair"):
        load_sampler("models/generators/repair.pt")


def test_repair_params_and_synth_kind_are_checked_naming_the_key():
    assert parse_params({}).synth.kind == "gan" and SynthParams().kind == "gan"
    for raw, fragment in [({"corruptions": ["occlusion", "smudge"]}, "repair.corruptions:"),
                          ({"corruptions": []}, "repair.corruptions:"),
                          ({"strengths": [0.7, 0.3]}, "repair.strengths:"),
                          ({"strengths": [0.0, 0.5]}, "repair.strengths:")]:
        with pytest.raises(ParamsError, match=fragment):
            parse_params({"repair": raw})
    with pytest.raises(ParamsError) as err:
        check_kind_param("vae")
    assert str(err.value) == "params.yaml: synth.kind: unknown generator kind 'vae' (registered: gan, repair, dagan)"


@pytest.mark.parametrize("stage", ["train_repair", "synthesize"])
def test_a_stage_refuses_an_unknown_kind_before_any_work(stage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"synth": {"kind": "vae"}}))
    with pytest.raises(SystemExit) as info:
        importlib.import_module(f"stages.{stage}").main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: params.yaml: synth.kind: unknown generator kind 'vae'")
    assert err.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
