"""GAN transfer through real DVC: `dvc exp run -S gan.init=source -S gan.freeze=d_lower` end to end (tiny params),
on a copy of the session's finished scratch run (conftest's `tiny_repro`)."""
from __future__ import annotations

import json
import re

import torch

from conftest import DVC, TINY_REPRO_GROUP, pipeline_env, run

pytestmark = TINY_REPRO_GROUP


def test_exp_run_with_source_init_and_freeze_d(tiny_repro_copy):
    project = tiny_repro_copy  # scratch (gan.init=scratch): the source GAN is only a placeholder
    assert "placeholder" in torch.load(project / "models/gan_source.pt", weights_only=True)
    scratch = json.loads((project / "metrics/gan.json").read_text())

    out = run(DVC + ["exp", "run", "-S", "gan.init=source", "-S", "gan.freeze=d_lower", "-S", "gan.source_steps=15",
                     "-S", "synth.filter=top_fraction", "-S", "synth.keep_fraction=0.5", "--name", "transfer"],
              project, env=pipeline_env())
    ran = set(re.findall(r"Running stage '([^']+)'", out.stdout))
    assert {"pretrain_gan", "train_gan", "synthesize", "gan_metrics", "evaluate"} <= ran and "pretrain" not in ran
    source = torch.load(project / "models/gan_source.pt", weights_only=True)
    assert source["step"] == 15 and source["params"]["steps"] == 15
    gan = torch.load(project / "models/gan.pt", weights_only=True)
    assert gan["params"]["init"] == "source" and gan["params"]["freeze"] == "d_lower"
    key = "convs.0.parametrizations.weight.original"
    assert torch.equal(gan["discriminator"][key], source["discriminator"][key])  # frozen lower block
    metrics = json.loads((project / "metrics/gan.json").read_text())
    assert metrics["cas"]["synthetic"]["accuracy"] >= 0 and metrics != scratch
    report = json.loads((project / "data/synthetic/report.json").read_text())
    assert report["filter"] == "top_fraction" and report["quota_met"] and set(report["per_class"]) == {"5", "6", "7", "8", "9"}
    shown = run(DVC + ["metrics", "show", "--json"], project).stdout
    assert "metrics/gan.json" in shown and "kid" in shown
