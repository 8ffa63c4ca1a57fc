"""Production Prefect (issue #15): deployment from prefect.yaml to a process work pool, retries that know a
user error, timeouts and cancellation that stop the stage processes, the temporary server's start-up."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client

from pipeline.deployed import ganaug_pipeline
from pipeline.flow import stage_exit_code
from conftest import forked_env, forked_python
from forkserver import SOCKET_ENV
from test_pipeline_flow import ONE_STAGE, artifacts_of, dvc, eventually, make_toy_repo, run_flow, task_runs_of
from pipeline.report import REPORT_KEY

ROOT = Path(__file__).resolve().parents[1]


def prefect_cli(*args: str) -> list[str]:
    """Prefect's command line, forked from the tests' Prefect fork server (tests/forkserver.py) when run with
    `forked_env()`: about 2 s of CPU less than a fresh `python -m prefect`."""
    return [forked_python(), "-m", "prefect", *args]


def env_for(api_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT), **extra}


def stop(proc: subprocess.Popen) -> None:
    """Stop a worker: SIGTERM, and SIGKILL if it has not exited after two minutes (a busy machine is slow)."""
    proc.terminate()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(60)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# --- retries that know a user error ----------------------------------------------------------------

def test_a_user_error_fails_at_once_with_its_message(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    monkeypatch.setenv("TOY_USER_ERROR", "prepare")
    state, run_id = run_flow(repo=str(repo), retries=3, retry_delay_seconds=0)
    assert state.is_failed()
    assert "refused its input, not retried: error: data.target: prepare cannot read it (on purpose)" in state.message
    assert eventually(lambda: getattr(task_runs_of(run_id).get("prepare"), "run_count", 0) == 1)
    assert getattr(task_runs_of(run_id)["prepare"], "run_count") == 1  # no second attempt


def test_the_stage_exit_code_is_read_from_dvcs_report():
    line = "ERROR: failed to reproduce 'prepare': failed to run: python -m stages.prepare, exited with 2"
    assert stage_exit_code(["x", line]) == 2
    assert stage_exit_code([line.replace("with 2", "with 1")]) == 1
    assert stage_exit_code(["ERROR: failed to reproduce 'prepare': output 'x' does not exist"]) is None


# --- timeouts and cancellation stop the processes -----------------------------------------------------

def test_a_stage_timeout_stops_the_stage_process(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy")
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("TOY_SLEEP", "600")
    monkeypatch.setenv("TOY_PIDFILE", str(pidfile))
    state, _ = run_flow(repo=str(repo), retries=0, stage_timeout_seconds=3)
    assert state.is_failed()
    pid = int(Path(f"{pidfile}.baseline").read_text())
    assert eventually(lambda: not alive(pid), timeout=30), f"stage process {pid} outlived its timeout"


@pytest.mark.heavy
def test_a_run_timeout_stops_the_running_stage_and_retries_nothing(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("TOY_SLEEP_STAGE", "prepare")
    monkeypatch.setenv("TOY_SLEEP", "600")
    monkeypatch.setenv("TOY_PIDFILE", str(pidfile))
    state, run_id = run_flow(repo=str(repo), retries=2, retry_delay_seconds=0, run_timeout_seconds=15)
    assert state.is_failed() and "the run passed its run_timeout_seconds=15" in state.message, state.message
    pid = int(Path(f"{pidfile}.prepare").read_text())
    assert eventually(lambda: not alive(pid), timeout=30), f"stage process {pid} outlived the run's deadline"
    assert getattr(task_runs_of(run_id)["prepare"], "run_count") == 1  # not retried after the deadline


@pytest.mark.heavy
def test_killing_a_run_mid_stage_leaves_no_process_and_the_next_run_succeeds(tmp_path, api_url):
    repo = make_toy_repo(tmp_path / "toy")
    pidfile = tmp_path / "pid"
    run = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--retries", "0", "--repo", str(repo)],
                           cwd=tmp_path, env=env_for(api_url, TOY_SLEEP="600", TOY_PIDFILE=str(pidfile)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage_pid = Path(f"{pidfile}.baseline")
    assert eventually(stage_pid.exists, timeout=120), "the finetune stage never started"
    pid = int(stage_pid.read_text())
    run.send_signal(signal.SIGTERM)  # what a Prefect worker does to a flow run it cancels
    run.wait(60)
    assert eventually(lambda: not alive(pid), timeout=30), f"stage process {pid} outlived its flow run"
    again = subprocess.run([forked_python(), "-m", "pipeline", "run", "--retries", "0", "--repo", str(repo)],
                           cwd=tmp_path, env=forked_env(env_for(api_url)), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "up to date" in dvc(repo, "status")


# --- the temporary server ---------------------------------------------------------------------------

def test_a_temporary_server_that_does_not_start_is_one_line_and_no_traceback(tmp_path):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), GANAUG_PREFECT_STARTUP_TIMEOUT="0", PREFECT_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--repo", str(repo)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [line for line in errors if "did not start within 0 s" in line] and len(errors) == 1
    assert not (repo / "dvc.lock").exists()


# --- deployment from prefect.yaml -------------------------------------------------------------------

def create_process_pool(name: str) -> None:
    """The work pool `prefect work-pool create NAME --type process --overwrite` makes, made through the client
    (the command's start-up alone is about 3 s of CPU)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    pool = WorkPoolCreate(name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
    with get_client(sync_client=True) as client:
        client.create_work_pool(pool, overwrite=True)


def deploy_toy(tmp_path: Path, api_url: str) -> tuple[Path, dict[str, str]]:
    """A toy project with ganaug's prefect.yaml and pipeline/, its pool created and `prefect deploy --all` run."""
    repo = make_toy_repo(tmp_path / "toy")
    shutil.copy(ROOT / "prefect.yaml", repo / "prefect.yaml")
    shutil.copytree(ROOT / "pipeline", repo / "pipeline")  # the entrypoint file, as in a real checkout
    env = env_for(api_url)
    create_process_pool("ganaug")
    out = subprocess.run(prefect_cli("--no-prompt", "deploy", "--all"), cwd=repo, env=forked_env(env),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return repo, env


def worker_once(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(prefect_cli("worker", "start", "--pool", "ganaug", "--run-once"), cwd=tmp_path,
                          env=forked_env(env), capture_output=True, text=True, timeout=600)


@pytest.mark.heavy
def test_prefect_yaml_deploys_to_a_process_pool_and_a_worker_runs_waits_and_cancels_the_manual_deployment(
        tmp_path, api_url):
    # One deployment and one pool for the three checks, in order: a worker runs the manual deployment one run
    # at a time; the run that waited for its slot runs next; a run cancelled mid-stage stops its processes.
    repo, env = deploy_toy(tmp_path, api_url)
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("ganaug-pipeline/nightly")
        manual = client.read_deployment_by_name("ganaug-pipeline/manual")
        assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 2 * * *", "UTC")]
        assert manual.schedules == [] and manual.work_pool_name == "ganaug"
        assert manual.global_concurrency_limit.limit == 1
        first = client.create_flow_run_from_deployment(manual.id, parameters={"shots": 5})
        second = client.create_flow_run_from_deployment(manual.id, parameters={"shots": 6})
    worker = worker_once(tmp_path, env)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    # both runs are scheduled for the same instant, so the worker may take either one first
    with get_client(sync_client=True) as client:
        runs = {shots: client.read_flow_run(r.id) for shots, r in ((5, first), (6, second))}
    done = [shots for shots, r in runs.items() if r.state.is_completed()]
    assert len(done) == 1, {shots: r.state for shots, r in runs.items()}
    ran, waited = done[0], 11 - done[0]
    assert runs[ran].name.startswith(f"toy: data.shots={ran}")
    assert REPORT_KEY in artifacts_of(runs[ran].id)
    # one run at a time (deployment concurrency limit 1, ENQUEUE): the other waited, visible as waiting ...
    assert runs[waited].state.name == "AwaitingConcurrencySlot", runs[waited].state
    worker = subprocess.Popen(prefect_cli("worker", "start", "--pool", "ganaug"), cwd=tmp_path,
                              env=forked_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # ... and runs once its slot is free (Prefect reschedules it a little later)
        def final(run_id):
            with get_client(sync_client=True) as client:
                return client.read_flow_run(run_id).state.is_final()
        assert eventually(lambda: final(runs[waited].id), timeout=300)
        with get_client(sync_client=True) as client:
            later = client.read_flow_run(runs[waited].id)
        assert later.state.is_completed(), later.state
        assert later.name.startswith(f"toy: data.shots={waited}")
        assert_cancelling_mid_stage_stops_its_processes(tmp_path, env, manual.id)
    finally:
        stop(worker)
    again = subprocess.run([forked_python(), "-m", "pipeline", "run", "--retries", "0", "--repo", str(repo)],
                           cwd=tmp_path, env=forked_env(env), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "up to date" in dvc(repo, "status")


def assert_cancelling_mid_stage_stops_its_processes(tmp_path: Path, env: dict[str, str], deployment_id) -> None:
    """A run of the deployment whose stages sleep (the process pool's `env` job variable), cancelled with
    `prefect flow-run cancel` once a stage process runs: the run ends Cancelled and takes the process with it."""
    pidfile = tmp_path / "pid"
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"retries": 0},
            # the cancelled run runs plain `dvc`, in its process group (SOCKET_ENV ''), which cancelling stops
            job_variables={"env": {"TOY_SLEEP": "600", "TOY_PIDFILE": str(pidfile), SOCKET_ENV: ""}})
    stage_pid = Path(f"{pidfile}.baseline")
    assert eventually(stage_pid.exists, timeout=180), "the finetune stage never started"
    pid = int(stage_pid.read_text())
    cancel = subprocess.run(prefect_cli("flow-run", "cancel", str(run.id)), cwd=tmp_path, env=forked_env(env),
                            capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr

    def cancelled():
        with get_client(sync_client=True) as client:
            return client.read_flow_run(run.id).state.is_cancelled()
    assert eventually(cancelled, timeout=120)
    assert eventually(lambda: not alive(pid), timeout=60), f"stage process {pid} outlived its cancelled run"
