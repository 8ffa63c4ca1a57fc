"""`ganaug run` and `ganaug serve` as a user runs them (subprocesses), against a test Prefect API."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.deployments import run_deployment

from pipeline.cli import build_parser, collect_overrides, main
from pipeline.deploy import MANUAL, NIGHTLY
from conftest import DVC, forked_python, pipeline_env, run
from test_pipeline_flow import make_toy_repo

ROOT = Path(__file__).resolve().parents[1]
TOY_STAGES = ["prepare", "finetune@baseline", "finetune@augmented", "evaluate"]


def ganaug(*args: str, api_url: str, cwd: Path, **popen) -> list[str] | subprocess.Popen:
    """The command line, as `python -m pipeline` (the `ganaug` console script's `main`), started by the fork
    server's client: its `dvc` commands (`sys.executable -m dvc`) are forked (tests/forkserver.py)."""
    env = dict(pipeline_env(), PREFECT_API_URL=api_url, PYTHONPATH=str(ROOT))
    cmd = [forked_python(), "-m", "pipeline", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, **popen)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def stage_lines(stdout: str) -> dict[str, str]:
    """{stage: ran|skipped} from the summary `ganaug run` prints at the end."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in TOY_STAGES and parts[1] in ("ran", "skipped"):
            out[parts[0]] = parts[1]
    return out


def test_shots_and_set_become_overrides():
    args = build_parser().parse_args(
        ["run", "--shots", "5", "--set", "gan.steps=20", "--set", "data.target_classes=[5, 6]",
         "--set", "data.target_test=null", "--set", "gan.lr_g=0.001"])
    assert collect_overrides(args) == {"gan.steps": 20, "data.target_classes": [5, 6], "data.target_test": None,
                                       "gan.lr_g": 0.001, "data.shots": 5}


@pytest.mark.parametrize("argv, named", [
    (["--set", "data.shotz=3"], "data.shotz: unknown key"),
    (["--shots", "0"], "data.shots: Input should be greater than or equal to 1"),
    (["--set", "classifier.arch=vgg"], "classifier.arch: got 'vgg'; allowed:"),
    (["--set", "data.shots"], "expected KEY=VALUE"),
    (["--exp-name", "no spaces"], "experiment_name 'no spaces'"),
])
def test_bad_override_exits_2_naming_the_key_before_anything_runs(tmp_path, capsys, argv, named):
    repo = make_toy_repo(tmp_path / "toy")
    assert main(["run", "--repo", str(repo), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
    assert not (repo / "dvc.lock").exists() and not (repo / "data").exists()


def test_repo_that_is_not_a_dvc_project_exits_2(tmp_path, capsys):
    assert main(["run", "--repo", str(tmp_path)]) == 2
    assert "no dvc.yaml here" in capsys.readouterr().err


@pytest.mark.heavy
def test_run_runs_everything_then_an_override_is_an_experiment_that_skips_what_it_does_not_change(tmp_path, api_url):
    repo = make_toy_repo(tmp_path / "toy")
    first = ganaug("run", "--repo", str(repo), api_url=api_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert stage_lines(first.stdout) == {s: "ran" for s in TOY_STAGES}
    assert "4 ran, 0 skipped" in first.stdout

    params = (repo / "params.yaml").read_bytes()
    # --repo defaults to the current directory; finetune.steps is read by the finetune stages only, so the
    # experiment finds prepare up to date (the workspace's output, pipeline/reuse.py) and evaluate runs after them
    second = ganaug("run", "--set", "finetune.steps=7", "--exp-name", "seven-steps", api_url=api_url, cwd=repo)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "saved as DVC experiment 'seven-steps'" in second.stdout
    assert stage_lines(second.stdout) == {"prepare": "skipped", "finetune@baseline": "ran",
                                          "finetune@augmented": "ran", "evaluate": "ran"}
    assert "3 ran, 1 skipped" in second.stdout
    assert (repo / "params.yaml").read_bytes() == params
    exps = run(DVC + ["exp", "list", "--name-only"], repo).stdout.split()
    assert exps == ["seven-steps"]


def test_failing_stage_exits_1_with_its_stderr(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy")
    monkeypatch.setenv("TOY_FAIL", "finetune")
    proc = ganaug("run", "--retries", "0", "--repo", str(repo), api_url=api_url, cwd=tmp_path)
    assert proc.returncode == 1
    assert "error: flow run" in proc.stderr
    assert "stage 'finetune@baseline' failed" in proc.stderr and "toy: finetune is broken on purpose" in proc.stderr


# test_pipeline_flow.py's test_deployments_nightly_cron_and_manual registers the same two deployments on the
# session's Prefect server: the group runs them one after the other.
@pytest.mark.heavy
@pytest.mark.xdist_group("augment_deployments")
def test_serve_registers_both_deployments_and_runs_the_manual_one(tmp_path, api_url):
    repo = make_toy_repo(tmp_path / "toy")
    server = ganaug("serve", "--repo", str(repo), "--retries", "0", "--cron", "30 3 * * *",
                    api_url=api_url, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with get_client(sync_client=True) as client:
            nightly = _wait_for_deployment(client, f"augment/{NIGHTLY}", server, repo)
            manual = _wait_for_deployment(client, f"augment/{MANUAL}", server, repo)
        assert [s.schedule.cron for s in nightly.schedules] == ["30 3 * * *"]
        assert manual.schedules == []

        flow_run = run_deployment(f"augment/{MANUAL}", timeout=240)
        assert flow_run.state.is_completed(), flow_run.state.message
        assert (repo / "dvc.lock").exists() and (repo / "metrics/eval.json").exists()
    finally:
        server.terminate()
        server.wait(30)


def _wait_for_deployment(client, name: str, server: subprocess.Popen, repo: Path, timeout: float = 90.0):
    """The deployment `name` once `server` has registered it: its parameters name `repo` (the session's Prefect
    server may hold an older deployment of that name, registered by another test)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = client.read_deployment_by_name(name)
        except ObjectNotFound:
            found = None
        if found is not None and found.parameters["params"]["repo"] == str(repo):
            return found
        if server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{name} was not registered for {repo} (serve exit code {server.poll()})")
        time.sleep(0.5)
