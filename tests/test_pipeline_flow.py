"""The Prefect flow (`pipeline/`) driving real DVC in throw-away git repos, against the session's Prefect test
server (conftest's `prefect_server`).

The real pipeline (tiny params) is a copy of the session's shared run (conftest's `tiny_repro`); the
mechanics (retries, failures, Dask, two runs at once) run on small stand-in DAGs whose stages are a few
lines of Python, so each costs seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateName, LogFilter, LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import TaskRunSort
from prefect.logging.handlers import APILogHandler

from conftest import DVC, TINY_PARAMS, forked_python, pipeline_env
from pipeline.dag import parse_dot, read_dag
from pipeline.deploy import DEFAULT_CRON, MANUAL, NIGHTLY, build_deployments
from pipeline.flow import WAITING_STATE, augment, dask_task_runner
from pipeline.outcome import classify, snapshot
from pipeline.report import PER_CLASS_KEY, REPORT_KEY
from pipeline.run_params import AugmentParams
from pipeline.workspace import workspace_lock
from ganaug.config.params import Params

ROOT = Path(__file__).resolve().parents[1]
CORE_STAGES = {"prepare", "pretrain", "train_gan", "synthesize", "concat",
               "finetune@baseline", "finetune@augmented", "evaluate"}
HAS_ALL_STAGES = all((ROOT / "stages" / f"{name}.py").exists() for name in ("train_gan", "synthesize"))

# --- a stand-in project: ganaug's DAG shape and output formats, stages of a few lines ------------

TOY_PY = '''\
import json, os, sys, time
from pathlib import Path
import yaml

def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)

def main(stage, *args):
    if os.environ.get("TOY_USER_ERROR") == stage:  # as ganaug's stages report a user's mistake: one line, exit 2
        print(f"error: data.target: {stage} cannot read it (on purpose)", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("TOY_PIDFILE"):  # <TOY_PIDFILE>.<variant or stage>: this stage's process id
        Path(os.environ["TOY_PIDFILE"] + "." + (args[0] if args else stage)).write_text(str(os.getpid()))
    if os.environ.get("TOY_SLEEP_STAGE") == stage:
        time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
    if os.environ.get("TOY_FAIL") == stage:
        print(f"toy: {stage} is broken on purpose", file=sys.stderr)
        sys.exit(3)
    marker = os.environ.get("TOY_FAIL_ONCE")
    if marker and not Path(marker).exists():
        Path(marker).write_text("failed once")
        print(f"toy: {stage} fails on its first attempt", file=sys.stderr)
        sys.exit(4)
    p = yaml.safe_load(Path("params.yaml").read_text())
    print(f"toy {stage}: hello on stdout")
    print(f"toy {stage}: hello on stderr", file=sys.stderr)
    if stage == "prepare":
        write("data/prepared/train.txt", f"shots={p['data']['shots']}")
    elif stage == "finetune":
        time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
        barrier = os.environ.get("TOY_BARRIER")  # <folder>:<n>: go on only once n finetune variants have started
        if barrier:
            folder, n = barrier.rsplit(":", 1)
            write(f"{folder}/{args[0]}", "started")
            deadline = time.monotonic() + float(os.environ.get("TOY_BARRIER_WAIT", "120"))
            while len(os.listdir(folder)) < int(n):
                if time.monotonic() > deadline:
                    print(f"toy: finetune {args[0]}: the other variants never started beside it", file=sys.stderr)
                    sys.exit(5)
                time.sleep(0.05)
        write(f"models/finetune/{args[0]}.txt", f"steps={p['finetune']['steps']}")
    elif stage == "evaluate":
        write("metrics/eval.json", json.dumps({"baseline": {"accuracy": 0.5, "macro_f1": 0.4}}))

main(*sys.argv[1:])
'''

ONE_STAGE = """\
stages:
  prepare:
    cmd: python toy.py prepare
    deps: [toy.py]
    params: [data.shots]
    outs: [data/prepared]
"""

TOY_DAG = ONE_STAGE + """\
  finetune:
    foreach: [baseline, augmented]
    do:
      cmd: python toy.py finetune ${item}
      deps: [toy.py, data/prepared]
      params: [finetune.steps]
      outs: ["models/finetune/${item}.txt"]
  evaluate:
    cmd: python toy.py evaluate
    deps: [models/finetune/baseline.txt, models/finetune/augmented.txt]
    metrics:
      - metrics/eval.json:
          cache: false
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def dvc(cwd: Path, *args: str) -> str:
    proc = subprocess.run(DVC + list(args), cwd=cwd, env=pipeline_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def make_toy_repo(dest: Path, dvc_yaml: str = TOY_DAG) -> Path:
    """A committed git + DVC repo with a valid params.yaml and `dvc_yaml` over toy.py."""
    dest.mkdir(parents=True)
    (dest / "dvc.yaml").write_text(dvc_yaml)
    (dest / "toy.py").write_text(TOY_PY)
    # the schema's defaults: valid whatever state params.yaml is in while it is being edited
    (dest / "params.yaml").write_text(yaml.safe_dump(Params().model_dump(mode="json"), sort_keys=False))
    (dest / ".gitignore").write_text("*.marker\n")
    git(dest, "init", "-q")
    git(dest, "config", "user.name", "ganaug-test")
    git(dest, "config", "user.email", "test@localhost")
    dvc(dest, "init", "-q")  # no analytics: DVC_NO_ANALYTICS, set in conftest for every process of the tests
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "init")
    return dest


# --- Prefect helpers ------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _forked_dvc(monkeypatch):
    """This module's flows run in the test process: their `dvc` commands (`sys.executable -m dvc`) and the stages
    those start are forked from the fork server (tests/forkserver.py), as in the shared run. Not for the tests of
    killing, timeouts and cancellation (tests/test_prefect_production.py): a forked `dvc` is outside the process
    group the flow kills."""
    for key, value in pipeline_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "executable", forked_python())


def run_flow(flow_=augment, **params):
    """(final state, flow run id) of one flow run."""
    state = flow_(params=params, return_state=True)
    return state, state.state_details.flow_run_id


def artifacts_of(flow_run_id: UUID) -> dict[str, object]:
    """{key: data} of the flow run's artifacts (a raw filter request: this client/server pair
    refuses the `null`s the client sends for filters left out)."""
    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 50, "offset": 0,
            "sort": "CREATED_DESC"}
    with get_client(sync_client=True) as client:
        found = client.request("POST", "/artifacts/filter", json=body).json()
    return {a["key"]: a["data"] for a in found}


def task_runs_of(flow_run_id: UUID) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
    return {r.name: r for r in runs}


def eventually(check, timeout: float = 15.0):
    """`check()` once it is truthy (the API records task run states in the background), else its last value."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def error_logs_of(flow_run_id: UUID, containing: str, timeout: float = 15.0) -> list[str]:
    """ERROR logs of the flow run that contain `containing` (logs reach the API in the background)."""
    APILogHandler().flush()
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=0)
        found = [log.message for log in logs if log.level >= 40 and containing in log.message]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


# --- the DAG ----------------------------------------------------------------------------------------

def test_dag_order_comes_from_dvc(tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    dag = read_dag(repo)
    assert dag.order == ("prepare", "finetune@baseline", "finetune@augmented", "evaluate")
    assert dag.upstream["evaluate"] == ("finetune@baseline", "finetune@augmented")
    assert dag.levels() == [["prepare"], ["finetune@baseline", "finetune@augmented"], ["evaluate"]]

    # a stage added to dvc.yaml shows up without touching pipeline/
    (repo / "dvc.yaml").write_text(TOY_DAG + "  publish:\n    cmd: echo hi\n    deps: [metrics/eval.json]\n")
    assert read_dag(repo).order[-1] == "publish"


def test_parse_dot_orders_topologically_whatever_the_listing_order():
    dag = parse_dot('strict digraph {\n"c";\n"b";\n"a";\n"a" -> "b";\n"b" -> "c";\n"x@1";\n}\n')
    assert dag.order == ("a", "b", "c", "x@1")


def test_stage_outcomes_come_from_the_lock_file_and_the_outputs(tmp_path):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)

    def repro() -> tuple[str, str]:
        before = snapshot(repo, "prepare")
        out = subprocess.run(DVC + ["repro", "--single-item", "prepare"], cwd=repo, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return classify(before, snapshot(repo, "prepare"), out.stdout.splitlines())

    assert snapshot(repo, "prepare").entry is None  # never ran: no lock entry
    assert repro() == ("ran", "ran")
    assert repro() == ("skipped", "up to date")
    shots = (repo / "data/prepared/train.txt").read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["shots"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert repro() == ("ran", "ran")  # a new param: a new lock entry
    assert (repo / "data/prepared/train.txt").read_text() != shots
    params["data"]["shots"] -= 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert repro() == ("skipped", "restored from run cache")  # the first run's outputs, back from DVC's cache
    assert (repo / "data/prepared/train.txt").read_text() == shots
    assert repro() == ("skipped", "up to date")


# --- parameters ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, named", [
    ({"data.shotz": 3}, "data.shotz: unknown key"),
    ({"data.shots": 0}, "data.shots: Input should be greater than or equal to 1"),
    ({"gan.diffaug": "blur"}, "gan.diffaug"),
])
def test_invalid_override_fails_before_any_stage(tmp_path, api_url, overrides, named):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    state, run_id = run_flow(repo=str(repo), overrides=overrides)
    assert state.is_failed()
    assert named in state.message
    assert task_runs_of(run_id) == {}
    assert not (repo / "data").exists() and not (repo / "dvc.lock").exists()
    with pytest.raises(ValueError, match=named.split(":")[0]):
        AugmentParams(repo=str(repo), overrides=overrides)


# --- retries and failures -----------------------------------------------------------------------------

def test_stage_failing_once_is_retried(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    monkeypatch.setenv("TOY_FAIL_ONCE", str(repo / "first-attempt.marker"))
    state, run_id = run_flow(repo=str(repo), retries=2, retry_delay_seconds=0)
    assert state.is_completed(), state.message
    assert state.result().status_of() == {"prepare": "ran"}
    assert eventually(lambda: getattr(task_runs_of(run_id).get("prepare"), "run_count", 0) == 2)
    assert (repo / "first-attempt.marker").exists()


def test_stage_failing_for_good_fails_the_flow_with_its_stderr(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    monkeypatch.setenv("TOY_FAIL", "prepare")
    state, run_id = run_flow(repo=str(repo), retries=1, retry_delay_seconds=0)
    assert state.is_failed()
    assert "stage 'prepare' failed" in state.message
    assert "toy: prepare is broken on purpose" in state.message
    # tried, retried, gave up
    assert eventually(lambda: getattr(task_runs_of(run_id).get("prepare"), "run_count", 0) == 2)
    assert error_logs_of(run_id, "toy: prepare is broken on purpose")


# --- scale-out and concurrency ------------------------------------------------------------------------

def test_independent_stages_run_concurrently_on_dask(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy")
    # each finetune variant waits until both have started: run one after the other, the first one fails
    monkeypatch.setenv("TOY_BARRIER", f"{tmp_path / 'started'}:2")
    on_dask = augment.with_options(task_runner=dask_task_runner(threads=2))
    state, _ = run_flow(on_dask, repo=str(repo), parallel=True, retries=0)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.status_of() == {s: "ran" for s in read_dag(repo).order}
    assert sorted(os.listdir(tmp_path / "started")) == ["augmented", "baseline"]
    by_stage = {r.stage: r for r in summary.stages}
    assert by_stage["evaluate"].started >= max(by_stage[f"finetune@{v}"].finished for v in ("baseline", "augmented"))
    assert by_stage["finetune@baseline"].started >= by_stage["prepare"].finished
    assert "up to date" in dvc(repo, "status")


def test_two_flow_runs_at_once_are_serialised(tmp_path, api_url, monkeypatch):
    repo = make_toy_repo(tmp_path / "toy")
    monkeypatch.setenv("TOY_SLEEP", "1")
    states: list = [None, None]

    def start(i: int) -> None:
        states[i] = augment(params={"repo": str(repo), "retries": 0}, return_state=True)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s.is_completed() for s in states), [s.message for s in states]
    first, second = sorted((s.result() for s in states), key=lambda r: r.stages[0].started)
    assert set(first.status_of().values()) == {"ran"}
    assert set(second.status_of().values()) == {"skipped"}
    assert second.stages[0].started >= first.stages[-1].finished  # one whole run after the other
    assert "up to date" in dvc(repo, "status")


def flow_runs_in_state(name: str, repo: Path) -> list:
    """The flow runs of project `repo` now in the state named `name` (the session's Prefect server also holds
    other tests' runs, which may be waiting for their own workspaces at the same moment)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(name=FlowRunFilterStateName(any_=[name]))))
    return [r for r in runs if (r.parameters.get("params") or {}).get("repo") == str(repo)]


def test_a_run_waiting_for_the_workspace_shows_as_waiting_in_prefect(tmp_path, api_url):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(state=augment(params={"repo": str(repo), "retries": 0},
                                                                       return_state=True)))
    with workspace_lock(repo, lambda _: None):  # another run holds the workspace
        run.start()
        waiting = eventually(lambda: flow_runs_in_state(WAITING_STATE, repo), timeout=120)
        assert len(waiting) == 1 and "waiting for the other flow run" in waiting[0].state.message
        assert not (repo / "data/prepared").exists()  # nothing ran while it waited
    run.join()
    state = result["state"]
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        history = sorted(client.read_flow_run_states(state.state_details.flow_run_id), key=lambda s: s.timestamp)
    names = [s.name for s in history]
    assert names[names.index(WAITING_STATE):] == [WAITING_STATE, "Running", "Completed"], names
    assert (repo / "data/prepared/train.txt").is_file()  # and then it ran


def test_experiments_saved_at_the_same_moment_from_two_workspaces_both_land(tmp_path):
    # bare `dvc exp save` in two worktrees of one repo at once fails ("'NoneType' object is not
    # subscriptable"): save_experiment serialises them
    from contextlib import ExitStack

    from pipeline.dvc_cli import run_dvc
    from pipeline.workspace import experiment_workspace, save_experiment

    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    with ExitStack() as stack:
        workspaces = [stack.enter_context(experiment_workspace(repo, {"data.shots": n}, print)) for n in (3, 4)]
        for ws in workspaces:
            run_dvc(ws.root, "repro")
        names: list[str] = []
        threads = [threading.Thread(target=lambda ws=ws, n=n: names.append(save_experiment(ws, f"shots-{n}", print)))
                   for ws, n in zip(workspaces, (3, 4))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(names) == ["shots-3", "shots-4"]
    assert sorted(dvc(repo, "exp", "list", "--name-only").split()) == ["shots-3", "shots-4"]
    assert git(repo, "worktree", "list").count("\n") == 1


STOPPED_MID_EXPERIMENT = """
import os, signal, sys
from pathlib import Path
from pipeline.dvc_cli import sigterm_deferred, terminate_children_on_sigterm
from pipeline.workspace import experiment_workspace
terminate_children_on_sigterm()
repo, out = Path(sys.argv[1]), Path(sys.argv[2])
with experiment_workspace(repo, {"data.shots": 4}, print) as ws:
    (out / "root").write_text(str(ws.root))
    with sigterm_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        (out / "after-kill").touch()  # the block goes on ...
    (out / "after-block").touch()  # ... and the process stops as it ends
"""


def test_a_sigterm_stops_the_process_after_its_experiment_worktree_is_removed(tmp_path):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    proc = subprocess.run([forked_python(), "-c", STOPPED_MID_EXPERIMENT, str(repo), str(tmp_path)], cwd=repo,
                          env={**pipeline_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert (tmp_path / "after-kill").exists() and not (tmp_path / "after-block").exists()
    root = Path((tmp_path / "root").read_text())
    assert not root.parent.exists() and git(repo, "worktree", "list").count("\n") == 1


# --- deployments --------------------------------------------------------------------------------------

# test_pipeline_cli.py's serve test registers the same two deployments on the session's Prefect server: the
# group runs them one after the other.
@pytest.mark.xdist_group("augment_deployments")
def test_deployments_nightly_cron_and_manual(tmp_path, api_url):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    params = AugmentParams(repo=str(repo), overrides={"data.shots": 5})
    nightly, manual = build_deployments(params)
    assert (nightly.name, manual.name) == (NIGHTLY, MANUAL)
    assert [s.schedule.cron for s in nightly.schedules] == [DEFAULT_CRON] == ["0 2 * * *"]
    assert nightly.schedules[0].schedule.timezone == "UTC"
    assert manual.schedules == []
    for dep in (nightly, manual):
        assert dep.parameters == {"params": params.model_dump(mode="json")}
        assert dep.parameters["params"]["overrides"] == {"data.shots": 5}
        assert dep.entrypoint == "pipeline.flow.augment"

    # registered with the (test) API, the schedule and the parameter schema are what the server keeps
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(nightly.apply())
    assert [s.schedule.cron for s in stored.schedules] == ["0 2 * * *"]
    assert "params" in stored.parameter_openapi_schema["properties"]
    assert stored.parameters["params"]["repo"] == str(repo)

    nightly_8pm, _ = build_deployments(params, cron="0 20 * * *", timezone="Europe/Berlin")
    assert nightly_8pm.schedules[0].schedule.cron == "0 20 * * *"
    assert nightly_8pm.schedules[0].schedule.timezone == "Europe/Berlin"


def test_yaml_overrides_are_written_into_the_experiment_params_only(tmp_path):
    from pipeline.overrides import write_overrides

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    write_overrides(params, {"data.shots": 5, "data.target_classes": [5, 6]})
    text = params.read_text()
    assert "# labelled target images per class" in text  # comments kept
    loaded = yaml.safe_load(text)
    assert loaded["data"]["shots"] == 5 and loaded["data"]["target_classes"] == [5, 6]
    assert loaded["gan"] == yaml.safe_load((ROOT / "params.yaml").read_text())["gan"]


def test_report_says_what_a_smaller_pipeline_did_not_produce(tmp_path):
    from pipeline.models import RunSummary, StageResult
    from pipeline.report import per_class_f1, render_markdown

    stage = StageResult(stage="prepare", status="skipped", detail="up to date", seconds=0.84, started=0, finished=1)
    summary = RunSummary(project=str(tmp_path), workspace=str(tmp_path), experiment=None,
                         overrides={"data.shots": 5}, stages=[stage], seconds=1.0)
    report = render_markdown(summary, tmp_path)
    assert "No `metrics/eval.json` in this run's workspace." in report
    assert "Synthetic images: n/a" in report
    assert "- Overrides: `data.shots=5`" in report
    assert "| prepare | skipped (up to date) | 0.8 s |" in report
    assert per_class_f1(tmp_path) is None
    assert "## Restoration" not in report  # off: nothing to say


def test_report_shows_restoration_when_it_was_on(tmp_path):
    from pipeline.models import RunSummary
    from pipeline.report import render_markdown

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/restore.json").write_text(json.dumps({
        "corrupt": "occlusion:0.3", "corrupt_on": "both", "feeds_pipeline": "learned", "verdict": "no restoration clearly changed",
        "quality": {"none": {"psnr": 15.1, "ssim": 0.6}, "learned": {"psnr": 21.5, "ssim": 0.9}},
        "downstream": {"none": {"macro_f1": 0.67, "accuracy": 0.67}, "learned": {"macro_f1": 0.83, "accuracy": 0.84}}}))
    summary = RunSummary(project=str(tmp_path), workspace=str(tmp_path), experiment=None, overrides={}, stages=[],
                         seconds=1.0)
    report = render_markdown(summary, tmp_path)
    assert "Corruption `occlusion:0.3` on both; the pipeline got learned." in report
    assert "| learned | 0.8300 | 21.50 |" in report and "**no restoration clearly changed**" in report


def test_an_experiment_name_that_exists_is_refused_before_any_stage(tmp_path, api_url):
    repo = make_toy_repo(tmp_path / "toy", ONE_STAGE)
    first, _ = run_flow(repo=str(repo), overrides={"data.shots": 3}, experiment_name="three")
    assert first.is_completed(), first.message
    lock_before = list(repo.glob("**/dvc.lock"))
    again, run_id = run_flow(repo=str(repo), overrides={"data.shots": 4}, experiment_name="three")
    assert again.is_failed() and "experiment_name 'three'" in again.message and "already has one so named" in again.message
    assert task_runs_of(run_id) == {}  # refused before any stage ran
    assert dvc(repo, "exp", "list", "--name-only").split() == ["three"] and list(repo.glob("**/dvc.lock")) == lock_before


# --- the real pipeline on tiny params (last in this module: by then the shared run is made) ---------------

def dvc_api_edges(project: Path) -> set[tuple[str, str]]:
    """(upstream, downstream) stage pairs from DVC's Python API: a second view of the DAG, not `dvc dag`."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {(dep.name, stage.name) for stage, dep in repo.index.graph.edges()}


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_ALL_STAGES, reason="stages/train_gan.py and stages/synthesize.py not written yet")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from DVC's Python API in dvc_api_edges
def test_real_pipeline_override_runs_as_an_experiment_in_dag_order_and_is_reported(tiny_repro_copy, api_url):
    # The real pipeline after a full run (a copy of the session's shared run). An override runs as a DVC
    # experiment: the workspace's params.yaml and outputs stay as they were. The experiment workspace starts
    # from the workspace's dvc.lock and outputs (pipeline/reuse.py), so the stages the override does not reach
    # are found up to date: neither retrained nor restored one by one from DVC's run cache. Restoring from
    # the run cache, and a first run of every stage, are classified on the stand-in DAG above; the real
    # stages' first run is the shared run itself.
    project = tiny_repro_copy
    edges = dvc_api_edges(project)
    params_before = (project / "params.yaml").read_bytes()
    metrics_before = (project / "metrics/eval.json").read_bytes()

    state, run_id = run_flow(repo=str(project), retries=0, overrides={"eval.batch_size": 100}, experiment_name="eval-100")
    assert state.is_completed(), state.message
    exp = state.result()
    order = [r.stage for r in exp.stages]
    # every stage of dvc.yaml, each after the stages it depends on
    assert CORE_STAGES <= set(order) and order[:2] == ["code", "prepare"] and order[-1] == "concat"  # publishes last
    assert set(order) == {s for edge in edges for s in edge}
    assert all(order.index(up) < order.index(down) for up, down in edges)
    assert eventually(lambda: set(task_runs_of(run_id)) == set(order))
    assert exp.experiment == "eval-100"
    assert "evaluate" in exp.ran
    up_to_date = {r.stage for r in exp.stages if r.detail == "up to date"}
    assert {"prepare", "pretrain", "train_gan", "synthesize"} | {s for s in order if s.startswith("finetune@")} <= up_to_date
    assert (project / "params.yaml").read_bytes() == params_before
    assert (project / "metrics/eval.json").read_bytes() == metrics_before
    assert git(project, "status", "--porcelain", "params.yaml") == ""
    shown = json.loads(dvc(project, "exp", "show", "--json"))
    exps = {e["name"]: e for base in shown for e in (base.get("experiments") or []) if e.get("name")}
    data = exps["eval-100"]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["eval"]["batch_size"] == 100
    assert git(project, "worktree", "list").count("\n") == 1  # the experiment workspace is gone

    # the report holds the experiment's metrics, the deltas, the synthetic image count and every stage's time
    ev = data["metrics"]["metrics/eval.json"]["data"]
    variants = [v for v in ev if isinstance(ev[v], dict) and "macro_f1" in ev[v]]
    assert {"baseline", "augmented"} <= set(variants)
    arts = artifacts_of(run_id)
    report = arts[REPORT_KEY]
    for v in variants:
        assert f"| {v} | {ev[v]['accuracy']:.4f} | {ev[v]['macro_f1']:.4f} |" in report
    assert report.index("| baseline |") < report.index("| augmented |")
    for v, delta in ev["vs_baseline"].items():
        assert f"Delta {v} - baseline: accuracy {delta['accuracy']['delta']:+.4f}" in report
        assert f"macro-F1 {delta['macro_f1']['delta']:+.4f}" in report
    origins = pd.read_parquet(project / "data/augmented/manifest.parquet")["origin"].value_counts()
    assert origins["synthetic"] == 5 * TINY_PARAMS["synth"]["per_class"]  # 5 target classes
    assert (f"Synthetic images in the augmented training set: {origins['synthetic']} "
            f"(plus {origins['real']} real)") in report
    for r in exp.stages:
        assert f"| {r.stage} | {r.outcome()} | {r.seconds:.1f} s |" in report

    # the table: one row per class, the F1 of every variant, and the deltas
    table = arts[PER_CLASS_KEY]
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["class"] for r in rows] == ["5", "6", "7", "8", "9"]
    for row in rows:
        assert all(0.0 <= row[f"f1_{v}"] <= 1.0 for v in variants)
        assert row["delta_augmented"] == pytest.approx(row["f1_augmented"] - row["f1_baseline"], abs=2e-4)
