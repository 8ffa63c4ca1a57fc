"""Feature-space metrics (FID, KID, precision/recall) and the gan_metrics stage (CAS), real torch on CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ganaug.config.params import EvalParams, FinetuneParams
from ganaug.io.atomic import atomic_dir
from ganaug.io.data import LoadOptions, load_digits_set, select_classes
from ganaug.io.imagefolder import MANIFEST, manifest_frame, write_pngs
from ganaug.judge.feature_metrics import fid, kid, nearest_distances, precision_recall
from ganaug.nets.classifier import ClassifierConfig, build_classifier, save_classifier
from stages.gan_metrics import cas, gan_metrics

CPU = torch.device("cpu")


def gaussian(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    a = gaussian(500)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    near, far = fid(a, gaussian(500, shift=0.5, seed=1)), fid(a, gaussian(500, shift=2.0, seed=1))
    assert near > 16 * 0.25 * 0.8 and far > near  # the mean term alone is D * shift^2
    assert fid(a, gaussian(500, seed=1)) < near  # two samples of one distribution: only the finite-sample bias


def test_kid_is_about_zero_for_the_same_distribution_and_larger_for_a_shifted_one():
    a = gaussian(400)
    same = kid(a, a, subsets=20, subset_size=100)
    other = kid(a, gaussian(400, seed=1), subsets=20, subset_size=100)
    shifted = kid(a, gaussian(400, shift=1.0, seed=1), subsets=20, subset_size=100)
    assert abs(same["mean"]) < 0.05 and abs(other["mean"]) < 0.05
    assert shifted["mean"] > 10 * max(abs(other["mean"]), 0.01)
    assert same["subset_size"] == 100


def test_precision_and_recall_separate_quality_from_coverage():
    real = gaussian(300, d=2)
    collapsed = np.zeros((300, 2))  # every fake at the real mode: precise, no coverage
    pr_same = precision_recall(real, gaussian(300, d=2, seed=1))
    pr_collapsed = precision_recall(real, collapsed)
    pr_far = precision_recall(real, gaussian(300, d=2, shift=10.0, seed=1))
    assert pr_same["precision"] > 0.8 and pr_same["recall"] > 0.8
    assert pr_collapsed["precision"] == 1.0 and pr_collapsed["recall"] < 0.05
    assert pr_far["precision"] == 0.0 and pr_far["recall"] == 0.0


def test_nearest_distances():
    ref = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert np.allclose(nearest_distances(np.array([[0.0, 0.0], [3.0, 5.0], [6.0, 8.0]]), ref), [0.0, 1.0, 5.0])


# ---------------------------------------------------------------- CAS on a tiny classifier

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny pretrained (untrained) classifier, 3 target classes: 4 shots each, 20 test images each."""
    root = tmp_path_factory.mktemp("cas")
    ds = select_classes(load_digits_set(LoadOptions(16, 1)), [5, 6, 7])
    idx = [np.flatnonzero(ds.y == k) for k in range(3)]
    train = ds.subset(np.concatenate([i[:4] for i in idx]))
    test = ds.subset(np.concatenate([i[4:24] for i in idx]))
    cfg = ClassifierConfig(n_classes=5, image_size=16, width=4)
    torch.manual_seed(0)
    save_classifier(root / "classifier.pt", build_classifier(cfg), cfg, list("abcde"), {})
    return root, train, test


def write_as_synthetic(root: Path, ds) -> None:
    with atomic_dir(root) as tmp:
        paths = write_pngs(tmp, ds.x, ds.y, ds.class_names, stem="syn")
        manifest_frame(paths, ds.y, ds.class_names, "0" * 64, 0).to_parquet(tmp / MANIFEST, index=False)


def test_cas_of_real_images_passed_as_synthetic_matches_the_real_trained_accuracy(setup):
    root, train, test = setup
    fp = FinetuneParams(steps=12, batch_size=8)
    out = cas(root / "classifier.pt", train, train, test, fp, 64, CPU)
    assert out["synthetic"]["accuracy"] == out["real"]["accuracy"]
    assert out["synthetic"]["per_class_recall"] == out["real"]["per_class_recall"]
    assert out["cas_minus_real_accuracy"] == 0.0


def test_stage_core_reads_the_synthetic_tree_and_reports_everything(setup, tmp_path):
    root, train, test = setup
    write_as_synthetic(tmp_path / "synthetic", train)  # PNG round trip is lossless for uint8 gray
    out = gan_metrics(root / "classifier.pt", tmp_path / "synthetic", train, test,
                      FinetuneParams(steps=12, batch_size=8), EvalParams(), CPU)
    assert out["n_synthetic"] == 12 and out["n_test"] == 60
    assert out["cas"]["synthetic"]["accuracy"] == out["cas"]["real"]["accuracy"]
    f = out["features"]
    assert f["fid"] >= 0 and f["kid_subset_size"] == 12 and 0 <= f["precision"] <= 1 and 0 <= f["recall"] <= 1
    assert set(out["per_class"]) == {"5", "6", "7"} and out["per_class"]["5"]["n_fake"] == 4


def test_empty_synthetic_set_gives_null_scores(setup, tmp_path):
    root, train, test = setup
    write_as_synthetic(tmp_path / "synthetic", train.subset(np.zeros(0, dtype=np.int64)))
    out = gan_metrics(root / "classifier.pt", tmp_path / "synthetic", train, test, FinetuneParams(), EvalParams(), CPU)
    assert out == {"n_synthetic": 0, "cas": None, "features": None, "per_class": None}


@pytest.mark.parametrize("stage", ["gan_metrics", "pretrain_gan"])
def test_new_stages_reject_bad_params_before_any_work(tmp_path, monkeypatch, capsys, stage):
    import importlib

    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"synth": {"per_class": 5, "ratio": 1.0}}))
    with pytest.raises(SystemExit) as info:
        importlib.import_module(f"stages.{stage}").main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: params.yaml: synth: set exactly one of per_class and ratio")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
