"""Same params, same machine (CPU): two full `dvc repro` runs give the same metrics, byte for byte.

Two copies of the project (git + DVC repos) run the whole pipeline side by side on
tiny params; every output is compared between them.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from conftest import TINY_PARAMS, deep_update, make_project, tool_env

PARAMS = deep_update(TINY_PARAMS, {
    "data": {"shots": 3, "image_size": 16},
    "classifier": {"steps": 20, "width": 8},
    "gan": {"steps": 20, "g_width": 16, "d_width": 16, "checkpoint_every": 10},
    "synth": {"per_class": 4},
    "finetune": {"steps": 10, "checkpoint_every": 5},
})
OUTPUT_DIRS = ("data", "metrics", "reports", "plots", "models")
# Model files also hold the run's wall-clock time (summary: seconds, images_per_s): compared tensor by tensor.
TIMED = ("models/classifier.pt", "models/finetune/baseline.pt", "models/finetune/augmented.pt")


def outputs(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes()
            for d in OUTPUT_DIRS for p in sorted((project / d).rglob("*")) if p.is_file()}


def test_two_full_runs_give_identical_metrics_and_outputs(tmp_path):
    projects = [make_project(tmp_path / name, PARAMS) for name in ("a", "b")]
    env = {**tool_env(), "GANAUG_DEVICE": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=p, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for p in projects]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out

    a, b = (outputs(p) for p in projects)
    assert a["metrics/eval.json"] == b["metrics/eval.json"]
    assert b'"macro_f1"' in a["metrics/eval.json"]
    assert a.keys() == b.keys() and {"data/prepared/target_train.npz", "models/gan.pt", "reports/eval.md"} <= a.keys()
    assert not [k for k in a if ".tmp-" in k or ".old-" in k]  # no temporaries left
    for p in projects:  # checkpoints are deleted when training ends
        assert not [f for f in (p / "checkpoints").rglob("*") if f.is_file()]
    different = [k for k in a if a[k] != b[k] and k not in TIMED]
    assert not different, f"outputs differ between two runs: {different}"
    for name in TIMED:
        sa, sb = (torch.load(p / name, map_location="cpu", weights_only=True)["state_dict"] for p in projects)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
