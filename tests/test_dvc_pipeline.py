"""The real pipeline through real DVC in throw-away git repos, on tiny params.

The full `dvc repro` is made once per session (conftest's `tiny_repro`); each test changes its own copy.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from torchvision.datasets import ImageFolder

from ganaug.io.data import load_prepared

from conftest import DVC, TINY_PARAMS, deep_update, pipeline_env, ran_stages, run

FINETUNE = ("baseline", "classical", "augmented")  # real shots (augmented: the hard-label mixing ablation)
DISTILL = ("gan", "source", "gan_source")  # real shots + a teacher-labelled second stream
VARIANTS = FINETUNE + DISTILL
# the stages that compute something (not `code`, which runs only when the code changes)
ALL_STAGES = {"prepare", "pretrain", "restore", "pretrain_gan", "meta_gan", "train_gan", "train_repair", "train_dagan",
              "synthesize", "concat", "teachers",
              *(f"finetune@{v}" for v in FINETUNE), *(f"distill@{v}" for v in DISTILL), "evaluate", "gan_metrics"}


def set_params(project, extra: dict) -> None:
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), extra), sort_keys=False))


@pytest.mark.heavy
def test_repro_runs_everything_then_skips_then_reruns_only_downstream(tiny_repro, tiny_repro_copy):
    assert ran_stages(tiny_repro.stdout) == ALL_STAGES | {"code"}  # the shared first `dvc repro` ran every stage
    project = tiny_repro_copy

    metrics = json.loads((project / "metrics/eval.json").read_text())
    for variant in VARIANTS:
        assert 0.0 <= metrics[variant]["accuracy"] <= 1.0 and 0.0 <= metrics[variant]["macro_f1"] <= 1.0
    shown = run(DVC + ["metrics", "show", "--json"], project).stdout
    assert "macro_f1" in shown and "baseline" in shown

    manifest = pd.read_parquet(project / "data/augmented/manifest.parquet")
    n_source = TINY_PARAMS["finetune"]["source_images"]  # a seeded subset: fewer than the source digits
    assert len(load_prepared(project / "data/prepared/source.npz")) > n_source
    assert manifest["origin"].value_counts().to_dict() == {"real": 15, "synthetic": 20, "source": n_source}
    folder = ImageFolder(str(project / "data/augmented"))  # the shipped hard-label view: the real shots alone
    assert len(folder) == 15 and sorted(folder.class_to_idx) == ["0_5", "1_6", "2_7", "3_8", "4_9"]
    sheet = json.loads((project / "data/augmented/datasheet.json").read_text())
    assert sheet["judged"]["evaluation"]["recommendation"] == metrics["recommendation"]
    assert (project / "plots/samples.png").stat().st_size > 0
    assert (project / "reports/eval.md").read_text().startswith("# ganaug evaluation")
    assert set(metrics["vs_baseline"]) == set(VARIANTS) - {"baseline"}
    assert set(metrics["vs_classical"]) == {"augmented", *DISTILL}
    assert metrics["recommendation"].startswith("Recommendation: ")
    assert "Best macro-F1: " in (project / "reports/eval.md").read_text()

    second = run(DVC + ["repro"], project, env=pipeline_env())
    assert ran_stages(second.stdout) == set(), second.stdout

    # another generator kind: its stage trains it, the GAN's and the other kind's write placeholders
    set_params(project, {"synth": {"per_class": 6, "kind": "repair"},
                         "repair": {"steps": 4, "width": 8, "checkpoint_every": 2}})
    third = run(DVC + ["repro"], project, env=pipeline_env())
    assert ran_stages(third.stdout) == {"train_gan", "train_repair", "train_dagan", "synthesize", "concat",
                                        "finetune@augmented", "distill@gan", "distill@gan_source", "evaluate",
                                        "gan_metrics"}  # not distill@source: no synthetic images in it
    check_repair_kind_run(project)

    # the classical policy is a param of the finetune group only: the classical variant changes, baseline and
    # augmented retrain to the same weights, so synthesize (judged by baseline) does not rerun, nor gan_metrics
    # (whose CAS runs use no augmentation); distill@* do, since models/finetune/classical.pt can be a teacher,
    # and so does teachers (the classical recipe at more seeds)
    before = json.loads((project / "metrics/eval.json").read_text())
    set_params(project, {"finetune": {"augment": "randaugment"}})
    fourth = run(DVC + ["repro"], project, env=pipeline_env())
    assert ran_stages(fourth.stdout) == ({f"finetune@{v}" for v in FINETUNE} | {f"distill@{v}" for v in DISTILL}
                                         | {"teachers", "evaluate", "concat"})  # concat: its datasheet records every param
    assert "--augment randaugment" in fourth.stdout
    after = json.loads((project / "metrics/eval.json").read_text())
    assert after["baseline"] == before["baseline"] and after["augmented"] == before["augmented"]


def check_repair_kind_run(project) -> None:
    """After `dvc repro` with synth.kind: repair: the repair model trained, the GAN a placeholder (no weights), and
    each variation's parent shot and strength in the synthetic and the published manifests."""
    gan = torch.load(project / "models/gan.pt", weights_only=True)
    assert set(gan) == {"kind", "placeholder"}  # no GAN weights: nothing was trained
    assert "placeholder" not in torch.load(project / "models/generators/repair.pt", weights_only=True)
    assert "placeholder" in torch.load(project / "models/generators/dagan.pt", weights_only=True)
    syn = pd.read_parquet(project / "data/synthetic/manifest.parquet")
    shots = load_prepared(project / "data/restored/target_train.npz")
    assert len(syn) == 30 and syn["parent_shot"].between(0, len(shots) - 1).all()
    assert (shots.y[syn["parent_shot"].to_numpy()] == syn["label"].to_numpy()).all()  # a variation keeps its class
    lo, hi = yaml.safe_load((project / "params.yaml").read_text())["repair"]["strengths"]
    assert syn["strength"].between(lo, hi).all()
    pub = pd.read_parquet(project / "data/augmented/manifest.parquet")
    real, made = pub[pub["origin"] == "real"], pub[pub["origin"] == "synthetic"]
    assert real["parent_shot"].isna().all() and len(made) == 30
    parents = real.iloc[made["parent_shot"].to_numpy(int)]  # the published real row i is shot i
    assert (parents["label"].to_numpy() == made["asked_label"].to_numpy()).all()
