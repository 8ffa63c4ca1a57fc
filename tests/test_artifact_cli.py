"""`ganaug sample` and `ganaug evaluate` (issue #14): the stages' code on a user's artifacts, through the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganaug.config.params import EvalParams, GanParams, SynthParams
from ganaug.io.data import LoadOptions, load_digits_set, select_classes, to_float
from ganaug.judge.evaluation import evaluate
from ganaug.nets.classifier import ClassifierConfig, build_classifier, save_classifier
from ganaug.tools.synthesis import synthesize
from ganaug.train.fit import FitConfig, fit
from ganaug.train.gan import train_gan
from pipeline.cli import main

CPU = torch.device("cpu")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits3():
    ds = select_classes(load_digits_set(LoadOptions(16, 1)), [0, 1, 2])
    return ds.subset(np.concatenate([np.flatnonzero(ds.y == k)[:8] for k in range(3)]))


@pytest.fixture(scope="module")
def gan_path(tmp_path_factory, digits3) -> Path:
    root = tmp_path_factory.mktemp("gan")
    p = GanParams(steps=6, z_dim=8, g_width=8, d_width=8, batch_size=6, ema_start=2)
    train_gan(digits3, p, root / "gan.pt", root / "ckpt", CPU)
    return root / "gan.pt"


def test_sample_writes_what_the_synthesize_core_writes(gan_path, tmp_path):
    assert main(["sample", "--gan", str(gan_path), "--out", str(tmp_path / "cli"), "--per-class", "3", "--seed", "5"]) == 0
    synthesize(gan_path, SynthParams(per_class=3, seed=5), tmp_path / "core", tmp_path / "core" / "samples.png", CPU)
    cli, core = _files(tmp_path / "cli"), _files(tmp_path / "core")
    assert {k: v for k, v in cli.items() if k.endswith(".png") and k != "samples.png"} == \
           {k: v for k, v in core.items() if k.endswith(".png") and k != "samples.png"}
    assert cli["manifest.parquet"] == core["manifest.parquet"] and len(cli) == 3 * 3 + 3


@pytest.mark.parametrize("argv, message", [
    (["--gan", "missing.pt"], r"^error: missing.pt: generator checkpoint not found"),
    (["--per-class", "-1"], r"^error: --per-class: Input should be greater than or equal to 0"),
    (["--generator", "best"], r"^error: --generator: Input should be 'ema', 'average' or 'raw'"),
])
def test_sample_mistakes_are_one_line_and_exit_2(gan_path, tmp_path, capsys, argv, message):
    base = {"--gan": str(gan_path), "--out": str(tmp_path / "out")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    assert main(["sample", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, digits3) -> Path:
    cfg = ClassifierConfig(n_classes=3, image_size=16, width=8)
    torch.manual_seed(0)
    model = build_classifier(cfg)
    fit(model, to_float(digits3.x), torch.as_tensor(digits3.y), FitConfig(steps=30, batch_size=12, lr=3e-3), CPU)
    path = tmp_path_factory.mktemp("clf") / "mine.pt"
    save_classifier(path, model.cpu(), cfg, ["zero", "one", "two"], {})
    return path


def _test_folder(root: Path) -> Path:
    """An ImageFolder test set with the classifier's classes under names sorting otherwise, plus one more class."""
    d = load_digits_set(LoadOptions(16, 1))
    for k, name in enumerate(["zero", "one", "two", "three"]):
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(d.y == k)[20:30]:
            Image.fromarray(d.x[i, 0]).save(root / name / f"{i}.png")
    return root


def test_evaluate_matches_the_stage_core_on_a_user_test_folder(classifier, tmp_path, capsys):
    folder = _test_folder(tmp_path / "test")
    assert main(["evaluate", str(classifier), "--test", str(folder), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ganaug evaluation") and "Held-out real test set: 30 images, 3 classes." in out
    got = json.loads((tmp_path / "eval/metrics/eval.json").read_text())
    d = load_digits_set(LoadOptions(16, 1))
    idx = np.concatenate([np.flatnonzero(d.y == k)[20:30] for k in range(3)])
    same = select_classes(d.subset(idx), [0, 1, 2])
    same.class_names = ["zero", "one", "two"]
    want, _ = evaluate({"mine": classifier}, same, EvalParams(), CPU)
    assert got["mine"]["macro_f1"] == want["mine"]["macro_f1"] and got["mine"]["accuracy"] == want["mine"]["accuracy"]
    assert (tmp_path / "eval/reports/eval.md").is_file() and (tmp_path / "eval/plots/confusion_mine.png").is_file()


def test_evaluate_names_the_classes_a_test_set_lacks(classifier, tmp_path, capsys):
    folder = _test_folder(tmp_path / "test")
    for f in (folder / "two").iterdir():
        f.unlink()
    (folder / "two").rmdir()
    assert main(["evaluate", str(classifier), "--test", str(folder), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder}: has no class(es) ['two'] of the classifier") and err.count("\n") == 1
    assert not (tmp_path / "eval").exists()
