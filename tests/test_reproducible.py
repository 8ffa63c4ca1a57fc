"""Same params, same machine (CPU): two full `dvc repro` runs give the same metrics, byte for byte.

The session's shared tiny run (conftest's `tiny_repro`, TINY_PARAMS) and a fresh clone of its git repo run
with the same code and params, on CPU with one torch thread; every output is compared between them. Both
fork their stage processes from a fork server (tests/forkserver.py); the clone's is a server of its own,
started for it, so its stages see another hash seed, as separate processes would. Then the stages that draw
random numbers (shots, GAN, noise, fine-tuning) run again in the clone as plain Python processes, as a
user's `dvc repro` runs them, and give the same outputs again: the fork server changes nothing.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import forkserver
from conftest import DVC, forked_python, pipeline_env, plain_pipeline_env, run

OUTPUT_DIRS = ("data", "metrics", "reports", "plots", "models")
# Model files also hold the run's wall-clock time (summary: seconds, images_per_s): compared tensor by tensor.
TIMED = ("models/classifier.pt", "models/finetune/baseline.pt", "models/finetune/augmented.pt")


def outputs(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes()
            for d in OUTPUT_DIRS for p in sorted((project / d).rglob("*")) if p.is_file()}


RANDOM_STAGES = ("prepare", "train_gan", "synthesize", "finetune@augmented")


def assert_same_outputs(projects: list[Path]) -> None:
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


@pytest.mark.heavy
def test_two_full_runs_give_identical_metrics_and_outputs(tiny_repro, tmp_path):
    # a fresh project from the shared one's commit (the same stages and params, not today's checkout:
    # stages/ and ganaug/ may have changed since the session began), without its outputs, cache or run cache
    fresh = tmp_path / "b"
    run(["git", "clone", "-q", str(tiny_repro.project), str(fresh)], tmp_path)
    assert not (fresh / "dvc.lock").exists() and not (fresh / ".dvc/cache").exists()
    plain = plain_pipeline_env()
    run(DVC + ["repro"], fresh, env={**plain, **forkserver.start(plain)})
    assert_same_outputs([tiny_repro.project, fresh])

    rerun = run(DVC + ["repro", "--force", "--single-item", *RANDOM_STAGES], fresh, env=plain)
    assert all(f"Running stage '{stage}'" in rerun.stdout for stage in RANDOM_STAGES), rerun.stdout
    assert_same_outputs([tiny_repro.project, fresh])


def test_a_forked_prefect_command_reads_its_own_environment_and_folder(tmp_path):
    """The Prefect processes that the tests fork (tests/forkserver.py PREFECT_FORKED: workers, flow-run engines,
    `python -m pipeline`) come from a server that imported Prefect under the session's environment, and
    Prefect reads its settings when imported. Forked, `prefect config view` shows the settings of its own
    environment and working folder, as the plain process does."""
    (tmp_path / "prefect.toml").write_text('[logging]\nlevel = "ERROR"\n')  # settings read from the working folder
    extra = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_CLIENT_MAX_RETRIES": "2"}
    views = [subprocess.run([python, "-m", "prefect", "config", "view", "--show-sources"], cwd=tmp_path,
                            env={**env, **extra}, capture_output=True, text=True, timeout=300)
             for python, env in ((forked_python(), pipeline_env()), (sys.executable, plain_pipeline_env()))]
    assert [v.returncode for v in views] == [0, 0], [v.stderr[-2000:] for v in views]
    assert views[0].stdout == views[1].stdout
    for line in ("PREFECT_API_URL='http://127.0.0.1:9/api' (from env)", "PREFECT_CLIENT_MAX_RETRIES='2' (from env)",
                 "PREFECT_LOGGING_LEVEL='ERROR' (from prefect.toml)"):
        assert line in views[0].stdout, views[0].stdout
