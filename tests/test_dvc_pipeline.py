"""The real pipeline through real DVC in a throw-away git repo, on tiny params."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from torchvision.datasets import ImageFolder

from conftest import TINY_PARAMS, deep_update, make_project, run
from stages.data import LoadOptions, load_digits_set

DVC = [sys.executable, "-m", "dvc"]
VARIANTS = ("baseline", "classical", "augmented", "augmented_classical")
ALL_STAGES = {"prepare", "pretrain", "pretrain_gan", "train_gan", "synthesize", "concat",
              *(f"finetune@{v}" for v in VARIANTS), "evaluate", "gan_metrics"}


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_params(project, extra: dict) -> None:
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), extra), sort_keys=False))


def test_repro_runs_everything_then_skips_then_reruns_only_downstream(tiny_project):
    first = run(DVC + ["repro"], tiny_project)
    assert ran_stages(first.stdout) == ALL_STAGES

    metrics = json.loads((tiny_project / "metrics/eval.json").read_text())
    for variant in VARIANTS:
        assert 0.0 <= metrics[variant]["accuracy"] <= 1.0 and 0.0 <= metrics[variant]["macro_f1"] <= 1.0
    shown = run(DVC + ["metrics", "show", "--json"], tiny_project).stdout
    assert "macro_f1" in shown and "baseline" in shown

    manifest = pd.read_parquet(tiny_project / "data/augmented/manifest.parquet")
    assert manifest["origin"].value_counts().to_dict() == {"real": 15, "synthetic": 20}  # 5 classes x (3 shots, 4 synthetic)
    folder = ImageFolder(str(tiny_project / "data/augmented"))
    assert len(folder) == 35 and sorted(folder.class_to_idx) == ["5", "6", "7", "8", "9"]
    assert (tiny_project / "plots/samples.png").stat().st_size > 0
    assert (tiny_project / "reports/eval.md").read_text().startswith("# ganaug evaluation")
    assert set(metrics["vs_baseline"]) == set(VARIANTS) - {"baseline"}
    assert set(metrics["vs_classical"]) == {"augmented", "augmented_classical"}
    assert "Best macro-F1: " in (tiny_project / "reports/eval.md").read_text()

    second = run(DVC + ["repro"], tiny_project)
    assert ran_stages(second.stdout) == set(), second.stdout

    set_params(tiny_project, {"synth": {"per_class": 6}})
    third = run(DVC + ["repro"], tiny_project)
    assert ran_stages(third.stdout) == {"synthesize", "concat", "finetune@augmented", "finetune@augmented_classical", "evaluate",
                                       "gan_metrics"}
    manifest = pd.read_parquet(tiny_project / "data/augmented/manifest.parquet")
    assert (manifest["origin"] == "synthetic").sum() == 30

    # the classical policy is a param: the *_classical variants change, the others retrain to the same weights
    before = json.loads((tiny_project / "metrics/eval.json").read_text())
    set_params(tiny_project, {"finetune": {"augment": "randaugment"}})
    fourth = run(DVC + ["repro"], tiny_project)
    assert ran_stages(fourth.stdout) == {f"finetune@{v}" for v in VARIANTS} | {"evaluate", "gan_metrics"}
    assert "--augment randaugment" in fourth.stdout
    after = json.loads((tiny_project / "metrics/eval.json").read_text())
    assert after["baseline"] == before["baseline"] and after["augmented"] == before["augmented"]


def test_exp_run_with_set_param(tiny_project):
    out = run(DVC + ["exp", "run", "-S", "data.shots=2", "--name", "two-shots"], tiny_project)
    assert ran_stages(out.stdout) == ALL_STAGES
    exps = run(DVC + ["exp", "show", "--json"], tiny_project).stdout
    assert "two-shots" in exps
    manifest = pd.read_parquet(tiny_project / "data/augmented/manifest.parquet")
    assert (manifest["origin"] == "real").sum() == 10


def _imagefolder_28(root, per_class: int = 6):
    digits = load_digits_set(LoadOptions(28, 1))
    for split, offset in (("train", 0), ("test", per_class)):
        for k in range(10):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True)
            for i in np.flatnonzero(digits.y == k)[offset : offset + per_class]:
                Image.fromarray(digits.x[i, 0]).save(d / f"{i}.png")
    return root


def test_imagefolder_target_runs_end_to_end(tmp_path):
    target = _imagefolder_28(tmp_path / "folder")
    params = deep_update(TINY_PARAMS, {"data": {"target": str(target), "image_size": 28}})
    project = make_project(tmp_path / "project", params)
    out = run(DVC + ["repro"], project)
    assert ran_stages(out.stdout) == ALL_STAGES
    prepared = json.loads((project / "data/prepared/manifest.json").read_text())
    assert prepared["classes"]["target"] == [f"class_{k}" for k in range(5, 10)]
    assert sum(prepared["counts"]["target_test"].values()) == 30
    img = Image.open(next((project / "data/augmented").rglob("syn_*.png")))
    assert img.size == (28, 28) and img.mode == "L"
