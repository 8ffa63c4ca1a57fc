"""`ganaug sweep` (pipeline/sweep*.py): the grid, its cells as DVC experiments, resume after a kill, and the same
metrics from local processes, a Dask cluster of 2 worker processes and a Prefect process pool with 2 workers.

The pipeline tests sweep a 2 x 2 grid of late-stage params on copies of the shared tiny run, so each cell
finds the early stages up to date (it starts from the workspace's outputs, pipeline/reuse.py):
`finetune.synth_weight` 0 or 1 (at 0 every stream variant is the real-only model, bit for bit) x
`finetune.temperature` 2.0 or 3.0. Both are read by the distill stages alone, so a cell runs those three and
what reads their outputs (concat, evaluate), and the cell with the workspace's own values (1, 2.0) runs
nothing. (A grid over `eval.batch_size` would also rerun restore and gan_metrics in every cell.)
Every process (the sweep, its cells, the Dask and Prefect workers) starts from the fork server's client
(conftest.forked_python), so the cells' `dvc` commands and stages are forked, as in the other pipeline tests.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import DVC, ROOT, _restore_modes, _shared_folder, forked_python, pipeline_env, run
from forkserver import PREFECT_ENV
from pipeline.outcome import read_lock
from pipeline.reuse import CACHED, PERSISTED, UNCACHED, declared_outputs, ignored_by_git, kind, locked_outputs
from pipeline.stats import mean_ci
from pipeline.sweep import Outcome, table
from pipeline.sweep_grid import SEEDED, Cell, grid_from_args, grid_from_file, cells
from pipeline.workspace import first_locked_stage, head_experiments
from test_pipeline_flow import eventually
from test_prefect_production import create_process_pool, stop

GRID = ["--name", "t", "--set", "finetune.synth_weight=0,1", "--set", "finetune.temperature=2.0,3.0"]
NAMES = {"t-synth_weight0-temperature2.0", "t-synth_weight0-temperature3.0", "t-synth_weight1-temperature2.0",
         "t-synth_weight1-temperature3.0"}


def python(*args: str) -> list[str]:
    return [forked_python(), *args]


def ganaug(project: Path, *args: str, env=None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(python("-m", "pipeline", *args, "--repo", str(project)), cwd=project,
                          env=env or pipeline_env(), capture_output=True, text=True, timeout=timeout)


def exp_names(project: Path) -> set[str]:
    out = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], project).stdout
    return {ref.split("/")[4] for ref in out.split() if len(ref.split("/")) == 5}  # refs/exps/ab/cdef.../name


def metrics_of(raw_file: Path) -> dict[str, dict]:
    return {c["name"]: c["metrics"] for c in json.loads(raw_file.read_text())["cells"]}


# --- the grid ------------------------------------------------------------------------------------------

def test_a_file_and_the_command_line_give_the_same_cells(tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"name": "g", "datasets": ["digits"], "seeds": "0-1",
                                                     "set": {"data.shots": [5, 10]}}))
    from_file = cells(grid_from_file(tmp_path / "g.yaml"))
    from_args = cells(grid_from_args("g", ["data.shots=5,10"], "0,1", ["digits"]))
    assert from_file == from_args and len(from_file) == 4
    c = from_file[3]
    assert c.name == "g-digits-shots10-seed1" and c.group == "g-digits-shots10" and c.seed == 1
    assert c.overrides["data.source"] == "digits" and c.overrides["data.target_classes"] == [5, 6, 7, 8, 9]
    assert all(c.overrides[f"{s}.seed"] == 1 for s in SEEDED) and c.overrides["data.seed"] == 1
    lists = cells(grid_from_args("l", ["gan.diffaug=[color, 'translation,cutout']"], None, []))
    assert [c.overrides for c in lists] == [{"gan.diffaug": "color"}, {"gan.diffaug": "translation,cutout"}]


@pytest.mark.parametrize("args, message", [
    (["--set", "data.shots=5,10", "--seeds", "0-x"], "--seeds '0-x': expected numbers and ranges"),
    (["--set", "data.shotz=5,10"], "data.shotz"),
    (["--set", "data.shots=0,5"], "data.shots"),
    (["--datasets", "imagenet"], "dataset 'imagenet': unknown"),
    (["--name", "a/b", "--set", "data.shots=5"], "sweep name 'a/b'"),
])
def test_a_bad_grid_is_one_line_before_anything_runs(tiny_repro, args, message):
    proc = ganaug(tiny_repro.project, "sweep", "--dry-run", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1 and message in proc.stderr


def test_an_executor_that_cannot_start_is_one_line(tiny_repro):
    env = {**pipeline_env(), "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens there
    proc = ganaug(tiny_repro.project, "sweep", "--set", "eval.batch_size=256", "--executor", "prefect", env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "the Prefect API at http://127.0.0.1:9/api does not answer" in proc.stderr
    proc = ganaug(tiny_repro.project, "sweep", "--set", "eval.batch_size=256", "--executor", "dask")
    assert proc.returncode == 2 and "--executor dask: give the scheduler's --address" in proc.stderr


@pytest.mark.heavy
def test_a_failing_cell_is_tried_twice_then_reported_and_the_sweep_exits_1(tiny_repro_copy):
    # a params-valid cell whose data is missing: its `prepare` fails with a DataError at every try
    proc = ganaug(tiny_repro_copy, "sweep", "--name", "f", "--set", "data.target=missing.npz")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "f-targetmissing.npz: failed after 2 tries" in proc.stdout and "missing.npz" in proc.stdout
    assert "error: cell f-targetmissing.npz failed" in proc.stderr and exp_names(tiny_repro_copy) == set()


def test_the_table_pairs_the_seeds_of_each_cell():
    def outcome(group: str, seed: int, base: float, gan: float) -> Outcome:
        cell = Cell(f"{group}-seed{seed}", group, seed, {})
        return Outcome(cell, "ran", metrics={"baseline": {"macro_f1": base}, "gan": {"macro_f1": gan}})
    base, gan = [0.50, 0.60, 0.55], [0.52, 0.625, 0.58]  # +0.02, +0.025, +0.03: clearly above
    outs = [outcome("a", s, b, g) for s, (b, g) in enumerate(zip(base, gan))] + [outcome("b", 0, 0.5, 0.4)]
    text = table(outs)
    m, h = mean_ci([g - b for b, g in zip(base, gan)])
    assert f"| a | 3 | 0.550 | {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}]* |" in text
    assert "| b | 1 | 0.500 | -0.100 |" in text  # one seed: no interval


# --- a cell starts from the workspace (pipeline/reuse.py) ---------------------------------------------------

def test_outputs_are_classed_by_their_own_stages_declaration_in_the_shipped_dvc_yaml_and_others():
    declared = declared_outputs(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert [kind(declared, stage, path) for stage, path in (
        ("evaluate", "metrics/eval.json"), ("distill@gan_source", "dvclive/finetune/gan_source/plots/metrics"),
        ("evaluate", "plots/confusion_gan.png"), ("evaluate", "reports/eval.md"))] == [UNCACHED] * 4
    assert [kind(declared, stage, path) for stage, path in (
        ("distill@gan", "models/finetune/gan.pt"), ("concat", "data/augmented"), ("distill@gan", "data/streams/gan"),
        ("code", "build/code"), ("train_gan", "models/gan.pt"), ("synthesize", "plots/samples.png"),
        ("evaluate", "metrics"), ("gone", "metrics/eval.json"))] == [CACHED] * 8
    # a stage's `${...}` stands for any text, but only for its own outputs: another stage's cached file
    # under the same folder stays cached; a persisted output is never reused
    other = declared_outputs(yaml.safe_load(
        "stages:\n  r:\n    foreach: [a, b]\n    do:\n      cmd: x\n      outs:\n        - reports/${key}.md:\n"
        "            cache: false\n        - ck/${key}/state:\n            persist: true\n"
        "  s:\n    cmd: y\n    outs: [reports/summary.md]\n"))
    assert [kind(other, stage, path) for stage, path in (("r@a", "reports/a.md"), ("s", "reports/summary.md"),
                                                         ("r@b", "ck/out/deep/state"))] == [UNCACHED, CACHED, PERSISTED]


def test_git_finds_ignored_outputs_whatever_their_names(tmp_path):
    run(["git", "init", "-q"], tmp_path, env=os.environ.copy())
    names = ['a"b.pt', "c\\d.pt", "é.pt", "tab\tx.pt", "kept.pt"]
    (tmp_path / ".gitignore").write_text("".join("/" + n.replace("\\", "\\\\") + "\n" for n in names[:4]))
    assert ignored_by_git(tmp_path, names) == set(names[:4])


def test_exp_save_is_given_a_plain_stage_that_dvc_yaml_still_defines(tmp_path):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  f:\n    foreach: [a]\n    do: {cmd: x}\n  prep: {cmd: y}\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  removed: {cmd: z}\n  f@a: {cmd: x}\n  prep: {cmd: y}\n")
    assert first_locked_stage(tmp_path) == ["prep"]
    (tmp_path / "dvc.lock").unlink()
    assert first_locked_stage(tmp_path) == []


@pytest.mark.heavy
def test_a_cell_reuses_the_workspaces_outputs_and_commits_no_cached_output_to_git(tiny_repro_copy):
    project = tiny_repro_copy
    ignore = project / "models/.gitignore"  # models/gan.pt loses its entry: it is left to DVC ...
    ignore.write_text(ignore.read_text().replace("/gan.pt\n", ""))
    (project / "models/classifier.pt").write_bytes(b"not the locked model")  # ... and this no longer matches
    proc = ganaug(project, "sweep", "--name", "r", "--set", "eval.batch_size=300")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = next(iter(head_experiments(project).values()))
    ran = set(json.loads(run(["git", "show", f"{ref}:sweep_cell.json"], project).stdout)["stage_seconds"])
    assert "evaluate" in ran and not {"prepare", "pretrain", "train_gan", "synthesize", "finetune@baseline"} & ran
    # both outputs came back from DVC's cache, which wrote gan.pt's entry again; no cached output is in git
    committed = run(["git", "ls-tree", "-r", "--name-only", ref], project).stdout.split()
    declared = declared_outputs(yaml.safe_load((project / "dvc.yaml").read_text()))
    cached = [p for stage, p in locked_outputs(read_lock(project)) if kind(declared, stage, p) == CACHED]
    assert {"models/gan.pt", "data/augmented", "build/code"} <= set(cached)
    assert not [f for f in committed for p in cached if f == p or f.startswith(p + "/")]
    assert "/gan.pt" in run(["git", "show", f"{ref}:models/.gitignore"], project).stdout.split()
    # eval.batch_size changes no prediction: the workspace's metrics, every variant
    ours = json.loads(run(["git", "show", f"{ref}:metrics/eval.json"], project).stdout)
    theirs = json.loads((project / "metrics/eval.json").read_text())
    variants = [v for v in theirs if isinstance(theirs[v], dict) and "macro_f1" in theirs[v]]
    assert len(variants) >= 5 and all(ours[v] == theirs[v] for v in variants)


# --- running it: local processes, resumed after a kill (the reference: cells one by one) -----------------

def _make_reference(folder: Path, shared, modes) -> None:
    """The reference sweep (see `reference`), unless made already; the caller holds the folder's lock."""
    if (folder / "done.json").exists():
        return
    project = folder / "project"
    shutil.rmtree(project, ignore_errors=True)  # a worker that died half-way
    shutil.copytree(shared.project, project, symlinks=True)
    _restore_modes(project, modes)
    cmd = python("-m", "pipeline", "sweep", *GRID, "--jobs", "1", "--repo", str(project))
    # the sweep and its cell processes in the group that is killed: not forked (their `dvc` commands are)
    first = subprocess.Popen(cmd, cwd=project, env={**pipeline_env(), PREFECT_ENV: ""}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert eventually(lambda: exp_names(project) or first.poll() is not None, timeout=600)
    finally:
        os.killpg(first.pid, signal.SIGTERM)  # the sweep, its cell process (which stops its `dvc repro`)
        first.wait(120)
    before = exp_names(project)
    again = ganaug(project, "sweep", *GRID, "--jobs", "1", "--raw", str(folder / "raw.json"))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (folder / "done.json").write_text(json.dumps({"stdout": again.stdout, "before": sorted(before)}))


@pytest.fixture
def reference(_tiny_repro_state, tmp_path_factory, worker_id):
    """A copy of the shared tiny run swept one cell at a time, killed after its first experiment was saved
    and started again: (project, the resumed sweep's output, its raw file, the experiments before the resume).
    Made once for all pytest-xdist workers, under a file lock in the folder they share; read-only."""
    folder = _shared_folder(tmp_path_factory, worker_id, "sweep_reference")
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        _make_reference(folder, *_tiny_repro_state)
    done = json.loads((folder / "done.json").read_text())
    return folder / "project", done["stdout"], folder / "raw.json", set(done["before"])


@pytest.mark.heavy
def test_a_killed_sweep_resumes_with_only_its_unfinished_cells(reference):
    project, out, raw_file, before = reference
    assert 1 <= len(before) < 4 and before <= NAMES
    assert f"{len(before)} done before, {4 - len(before)} to run" in out
    ran = {line.split(":")[0].strip() for line in out.splitlines() if line.endswith(": ran")}
    assert ran == NAMES - before and exp_names(project) == NAMES
    # the killed cell removed its experiment worktree on the way out (SIGTERM runs its `finally`)
    worktrees = run(["git", "worktree", "list", "--porcelain"], project).stdout
    assert [line for line in worktrees.splitlines() if line.startswith("worktree ")] == [f"worktree {project}"]
    # the table: at weight 0 every stream variant is the real-only model, so its deltas are exactly 0
    m = metrics_of(raw_file)
    for name in ("t-synth_weight0-temperature2.0", "t-synth_weight0-temperature3.0"):
        assert all(m[name][v]["macro_f1"] == m[name]["baseline"]["macro_f1"] for v in ("gan", "source", "gan_source"))
    assert m["t-synth_weight0-temperature2.0"] == m["t-synth_weight0-temperature3.0"]  # nothing to weigh at 0
    # a cell runs the stages that read what it changes, and those downstream of them; none at the workspace's values
    ran_stages_of = {c["name"]: set(c["record"]["stage_seconds"]) for c in json.loads(raw_file.read_text())["cells"]}
    assert ran_stages_of.pop("t-synth_weight1-temperature2.0") == set()
    assert all(s <= {"distill@gan", "distill@source", "distill@gan_source", "concat", "evaluate"}
               for s in ran_stages_of.values()) and "evaluate" in set.union(*ran_stages_of.values())
    assert "| t-synth_weight0-temperature2.0 | 1 |" in out and "+0.000 |" in out


@pytest.mark.heavy
def test_dvc_exp_show_lists_every_cell_with_its_params_and_metrics(reference, tmp_path):
    project, raw_file = tmp_path / "project", reference[2]
    shutil.copytree(reference[0], project, symlinks=True)  # the shared reference stays untouched
    shown = json.loads(run(DVC + ["exp", "show", "--json"], project, env=pipeline_env()).stdout)
    exps = {e["name"]: e["data"] for rev in shown for e in (rev.get("experiments") or [])
            for e in e.get("revs", []) if e.get("name")}
    assert set(exps) == NAMES
    for name, data in exps.items():
        params = data["params"]["params.yaml"]["data"]
        assert params["finetune"]["synth_weight"] == int(name.split("synth_weight")[1][0])
        assert params["finetune"]["temperature"] == float(name.rsplit("temperature", 1)[1])
        assert data["metrics"]["metrics/eval.json"]["data"]["baseline"]["macro_f1"] == \
            metrics_of(raw_file)[name]["baseline"]["macro_f1"]


# --- elsewhere: a Dask cluster, a Prefect work pool -------------------------------------------------------
# Each sweeps a copy of the reference project after `dvc exp remove` of its cells (how a sweep is cleaned
# up): the cells run again, end to end, and DVC restores the stages the reference ran from its run cache,
# as a shared cache would on a cluster (the others are up to date), so these tests cost a few seconds a
# cell. That a pipeline gives the same bytes in another process is tests/test_reproducible.py's.

@pytest.fixture
def swept_copy(reference, tmp_path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(reference[0], project, symlinks=True)
    run(DVC + ["exp", "remove", *sorted(NAMES)], project, env=pipeline_env())
    assert exp_names(project) == set()
    return project


@pytest.mark.heavy
def test_a_local_dask_cluster_of_two_worker_processes_gives_the_same_metrics(reference, swept_copy):
    from distributed import Client

    file, log = swept_copy.parent / "scheduler.json", open(swept_copy.parent / "dask.log", "w")
    common = ["--scheduler-file", str(file), "--no-dashboard"]
    cluster = [subprocess.Popen(python("-m", "distributed.cli.dask_scheduler", "--port", "0", *common),
                                env=pipeline_env(), stdout=log, stderr=log)]
    try:
        assert eventually(file.is_file, timeout=120), (swept_copy.parent / "dask.log").read_text()
        cluster.append(subprocess.Popen(python("-m", "distributed.cli.dask_worker", "--nworkers", "2", "--nthreads", "1",
                                               *common), env=pipeline_env(), stdout=log, stderr=log))
        with Client(scheduler_file=str(file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        raw_file = swept_copy.parent / "raw.json"
        proc = ganaug(swept_copy, "sweep", *GRID, "--executor", "dask", "--address", address, "--raw", str(raw_file))
    finally:
        for p in reversed(cluster):
            stop(p)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0 done before, 4 to run on Dask at" in proc.stdout and exp_names(swept_copy) == NAMES
    assert metrics_of(raw_file) == metrics_of(reference[2])


@pytest.mark.heavy
def test_a_prefect_process_pool_with_two_workers_gives_the_same_metrics(reference, swept_copy, api_url):
    project, tag = swept_copy, uuid.uuid4().hex[:8]
    deployment = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                      if d["name"] == "sweep")
    deployment.update(name=f"sweep-{tag}", work_pool={"name": f"sweep-{tag}"})
    (project / "prefect.yaml").write_text(yaml.safe_dump({"name": "ganaug", "deployments": [deployment]}))
    shutil.copytree(ROOT / "pipeline", project / "pipeline")  # the entrypoint file, as in a real checkout
    env = {**pipeline_env(), "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
    create_process_pool(f"sweep-{tag}")
    out = subprocess.run(python("-m", "prefect", "--no-prompt", "deploy", "--all"), cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    workers = [subprocess.Popen(python("-m", "prefect", "worker", "start", "--pool", f"sweep-{tag}", "--limit", "1"), cwd=project,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        raw_file = project.parent / "raw.json"
        proc = ganaug(project, "sweep", *GRID, "--executor", "prefect", "--deployment",
                      f"ganaug-sweep-cell/sweep-{tag}", "--raw", str(raw_file), env=env)
    finally:
        for w in workers:
            stop(w)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert exp_names(project) == NAMES
    assert metrics_of(raw_file) == metrics_of(reference[2])
    from prefect.client.orchestration import get_client  # progress and the table, in Prefect too
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        def artifact(key: str):
            return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[-1]
        assert artifact("ganaug-sweep-t").data == 100.0
        assert "| t-synth_weight0-temperature2.0 | 1 |" in artifact("ganaug-sweep-t-table").data
