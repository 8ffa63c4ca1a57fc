"""`dvc exp run` end to end with the pipeline's options, on copies of the session's shared tiny run.

A full rerun of the 17 stages costs about as much as the shared run itself, whatever the tiny params: most
of it is per-stage cost (DVC's own work, and each stage process, forked from tests/forkserver.py). So options
that touch different stages share one experiment, and each check below says which option it is about:
- hostile class names (issue #14) with a transferred GAN (`gan.init: source`, FreezeD) and a filter;
- restoration of occluded images (issue #16) feeding a meta-learned GAN start (issue #12), on an
  ImageFolder target of 28x28 PNGs with `-S data.shots=2`.
"""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from conftest import DVC, pipeline_env, ran_stages, run
from test_dvc_pipeline import ALL_STAGES
from ganaug.io.data import LoadOptions, load_digits_set
from ganaug.io.imagefolder import class_folders
from ganaug.nets.classifier import load_classifier


def exp_run(project: Path, *settings: str, name: str) -> set[str]:
    """`dvc exp run -S s ... --name name` in `project`; the stages it ran."""
    args = [a for s in settings for a in ("-S", s)]
    return ran_stages(run(DVC + ["exp", "run", *args, "--name", name], project, env=pipeline_env()).stdout)


# --- hostile class names, with a transferred GAN ------------------------------------------------------

def _hostile_npz(path: Path, absolute: Path) -> list[str]:
    """The digits as an .npz whose classes 5-9 (the default target classes) carry hostile names that also
    sort differently from their label order; returns those five names."""
    d = load_digits_set(LoadOptions(16, 1))
    target = ["Sandal", "../../../escape", str(absolute), "a/b", "$\\undefinedmacro$"]
    np.savez(path, x=d.x[:, 0], y=d.y, class_names=np.array([f"c{k}" for k in range(5)] + target))
    return target


def check_hostile_names(project: Path, names: list[str], tmp_path: Path) -> None:
    """No class name became a path, and every reader of the published dataset numbers the classes alike."""
    assert not (tmp_path / "absolute_target").exists()
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(project) and p.name in ("escape", "b")]
    assert not outside, outside
    for out in ("data/synthetic", "data/augmented"):
        dirs = [p for p in (project / out).rglob("*") if p.is_dir()]
        assert sorted(p.name for p in dirs) == class_folders(names) and all(p.parent == project / out for p in dirs)

    manifest = pd.read_parquet(project / "data/augmented/manifest.parquet")
    assert manifest.dropna(subset=["label"]).drop_duplicates("label").sort_values("label")["class_name"].tolist() == names
    folder = ImageFolder(str(project / "data/augmented"))
    by_path = dict(zip(manifest["path"], manifest["label"]))
    assert [by_path[str(Path(p).relative_to(project / "data/augmented"))] for p, _ in folder.samples] == folder.targets
    for model in (project / "models/finetune").glob("*.pt"):
        assert load_classifier(model)[2] == names, model  # the trained heads number classes the same way
    sheet = json.loads((project / "data/augmented/datasheet.json").read_text())
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert [c["name"] for c in sheet["contents"]["classes"]] == names
    assert sheet["judged"]["evaluation"]["recommendation"] == ev["recommendation"]
    assert sheet["made_by"]["params"]["data"]["target"] == str(tmp_path / "hostile.npz")


def check_transfer(project: Path, scratch_gan_metrics: dict, class_names: list[str]) -> None:
    """The target GAN started from the source GAN with the lower D block frozen; the filter kept its quota."""
    source = torch.load(project / "models/gan_source.pt", weights_only=True)
    assert source["step"] == 15 and source["params"]["steps"] == 15
    gan = torch.load(project / "models/gan.pt", weights_only=True)
    assert gan["params"]["init"] == "source" and gan["params"]["freeze"] == "d_lower"
    key = "convs.0.parametrizations.weight.original"
    assert torch.equal(gan["discriminator"][key], source["discriminator"][key])  # frozen lower block
    metrics = json.loads((project / "metrics/gan.json").read_text())
    assert metrics["cas"]["synthetic"]["accuracy"] >= 0 and metrics != scratch_gan_metrics
    report = json.loads((project / "data/synthetic/report.json").read_text())
    assert report["filter"] == "top_fraction" and report["quota_met"] and set(report["per_class"]) == set(class_names)
    shown = run(DVC + ["metrics", "show", "--json"], project).stdout
    assert "metrics/gan.json" in shown and "kid" in shown


@pytest.mark.heavy
def test_hostile_class_names_with_a_transferred_gan_run_end_to_end(tiny_repro_copy, tmp_path):
    project = tiny_repro_copy  # scratch (gan.init=scratch): the source GAN is only a placeholder
    assert "placeholder" in torch.load(project / "models/gan_source.pt", weights_only=True)
    scratch = json.loads((project / "metrics/gan.json").read_text())
    names = _hostile_npz(tmp_path / "hostile.npz", tmp_path / "absolute_target")

    ran = exp_run(project, f"data.target={tmp_path / 'hostile.npz'}", "gan.init=source", "gan.freeze=d_lower",
                  "gan.source_steps=15", "synth.filter=top_fraction", "synth.keep_fraction=0.5", name="hostile-transfer")
    assert {"prepare", "pretrain_gan", "train_gan", "synthesize", "gan_metrics", "evaluate", "concat"} <= ran
    check_hostile_names(project, names, tmp_path)
    check_transfer(project, scratch, names)


# --- restoration feeding a meta-learned GAN -----------------------------------------------------------

META = ["gan.init=meta", "meta.episodes=3", "meta.inner_steps=2", "meta.val_tasks=1", "meta.steps_grid=[3,6]",
        "meta.lr_factors=[1.0]", "meta.gamma_grid=[0.0]"]


def check_restoration(project: Path, eval_before: dict) -> None:
    """The learned restorer repaired the occluded images and its output fed the pipeline."""
    m = json.loads((project / "metrics/restore.json").read_text())
    assert m["corrupt"] == "occlusion:0.3" and m["feeds_pipeline"] == "learned"
    assert set(m["downstream"]) == {"none", "classical", "learned"}
    assert not filecmp.cmp(project / "data/prepared/target_test.npz", project / "data/restored/target_test.npz",
                           shallow=False)
    assert json.loads((project / "metrics/eval.json").read_text()) != eval_before
    assert (project / "plots/restore.png").stat().st_size > 0 and "| learned |" in (project / "reports/restore.md").read_text()
    assert "state_dict" in torch.load(project / "models/restorer.pt", weights_only=True)


def check_meta_start(project: Path) -> None:
    """train_gan adapted the meta-learned start for the number of steps meta-validation chose."""
    assert "placeholder" in torch.load(project / "models/gan_source.pt", weights_only=True)  # no source GAN needed
    meta = json.loads((project / "metrics/meta.json").read_text())
    assert meta["summary"]["ways"] == 2  # digits: 5 source classes, 2 kept for meta-validation, so 2-way tasks
    gan = torch.load(project / "models/gan.pt", weights_only=True)
    assert gan["params"]["init"] == "meta" and gan["step"] == meta["chosen"]["steps"] in (3, 6)


def _imagefolder_28(root: Path, per_class: int = 6) -> Path:
    """The digits as an ImageFolder target: 28x28 grayscale PNGs in train/ and test/, classes class_0..class_9."""
    digits = load_digits_set(LoadOptions(28, 1))
    for split, offset in (("train", 0), ("test", per_class)):
        for k in range(10):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True)
            for i in np.flatnonzero(digits.y == k)[offset : offset + per_class]:
                Image.fromarray(digits.x[i, 0]).save(d / f"{i}.png")
    return root


def check_imagefolder_target(project: Path) -> None:
    """`-S data.shots=2` and an ImageFolder target of 28x28 PNGs went through with no code change."""
    assert "restored-meta" in run(DVC + ["exp", "show", "--json"], project).stdout
    manifest = pd.read_parquet(project / "data/augmented/manifest.parquet")
    assert (manifest["origin"] == "real").sum() == 10  # 2 shots x 5 classes
    prepared = json.loads((project / "data/prepared/manifest.json").read_text())
    assert prepared["classes"]["target"] == [f"class_{k}" for k in range(5, 10)]
    assert sum(prepared["counts"]["target_test"].values()) == 30
    img = Image.open(next((project / "data/augmented").rglob("syn_*.png")))
    assert img.size == (28, 28) and img.mode == "L"


@pytest.mark.heavy
def test_restoration_feeding_a_meta_learned_gan_on_an_imagefolder_target_runs_end_to_end(tiny_repro_copy, tmp_path):
    project = tiny_repro_copy
    assert "placeholder" in torch.load(project / "models/gan_meta.pt", weights_only=True)
    before = json.loads((project / "metrics/eval.json").read_text())
    target = _imagefolder_28(tmp_path / "folder")

    ran = exp_run(project, f"data.target={target}", "data.image_size=28", "data.shots=2",
                  "restore.enabled=true", "data.corrupt=occlusion:0.3", *META, name="restored-meta")
    assert ran == ALL_STAGES
    check_imagefolder_target(project)
    check_restoration(project, before)
    check_meta_start(project)
