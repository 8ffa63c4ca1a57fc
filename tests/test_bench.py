"""Smoke tests of the benchmarks on a tiny grid and tiny sizes (the real runs are not part of the suite)."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT, forked_python, pipeline_env, tool_env

sys.path.insert(0, str(ROOT))  # `bench` is a folder of scripts next to `stages`, not an installed package

from bench.common import mean_ci, read_section, write_section  # noqa: E402
from bench.throughput import measure_process  # noqa: E402
from bench.uplift import main as uplift_main, variant_stages  # noqa: E402
from pipeline.dag import read_dag  # noqa: E402

TINY = ["--set", "classifier.steps=10", "--set", "classifier.width=8", "--set", "gan.steps=3", "--set", "gan.g_width=16",
        "--set", "gan.d_width=16", "--set", "gan.batch_size=16", "--set", "synth.per_class=4", "--set", "finetune.steps=4",
        "--set", "finetune.batch_size=16", "--set", "finetune.source_images=60"]
VARIANTS = ["real-only", "real + classical", "real + GAN (teacher-labelled stream)", "real + source relabelled",
            "real + GAN + source", "ablation: hard-label mixing"]
KEYS = ["baseline", "classical", "gan", "source", "gan_source", "augmented"]
NUMBER = r"[-+]?\d+\.\d+"


def bench(module: str, args: list[str], env: dict | None = None, python: str = sys.executable) -> subprocess.CompletedProcess:
    proc = subprocess.run([python, "-m", f"bench.{module}", *args], cwd=ROOT, env={**tool_env(), **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def table_rows(section: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table right after `heading`."""
    lines = section.split(heading, 1)[1].strip().splitlines()
    rows = []
    for line in lines:  # the first run of table lines
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append(line)
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]  # without header and separator


@pytest.mark.heavy
def test_uplift_on_a_tiny_grid_writes_a_table_of_every_variant(tmp_path, monkeypatch):
    doc, raw = tmp_path / "benchmarks.md", tmp_path / "uplift.json"
    doc.write_text("# kept\n\nhand-written text stays\n")
    lines = tmp_path / "cells.jsonl"
    # the bench's pipeline forks its stages from the tests' fork server (conftest.pipeline_env): a third of the time
    bench("uplift", ["--datasets", "digits", "--shots", "3", "--seeds", "0", "--jobs", "1", *TINY,
                     "--out", str(doc), "--raw", str(raw), "--cells-jsonl", str(lines)],
          env=pipeline_env(), python=forked_python())
    section = read_section(doc, "uplift")
    assert section and "hand-written text stays" in doc.read_text()
    assert "-m bench.uplift --datasets digits --shots 3" in section and "CPU cores" in section
    rows = table_rows(section, "### digits")
    assert [r[1] for r in rows] == VARIANTS and all(r[0] == "3" for r in rows)
    for r in rows:
        for cell in r[2:4]:  # macro-F1, accuracy in [0, 1]
            assert 0.0 <= float(cell) <= 1.0
    assert re.fullmatch(rf"{NUMBER} \[{NUMBER}, {NUMBER}\]\*?", rows[2][4]), rows[2]  # real + GAN vs real-only
    assert re.fullmatch(rf"{NUMBER} \[{NUMBER}, {NUMBER}\]\*?", rows[2][6]), rows[2]  # real + GAN vs real + classical
    assert rows[0][4] == "—" and rows[1][6] == "—"
    quality = table_rows(section, "### GAN quality and cost per cell")
    assert quality[0][:5] == ["digits", "3", "15", "20", str(json.loads(raw.read_text())["cells"][0]["n_test"])]
    assert 0.0 <= float(quality[0][5]) <= 1.0  # CAS accuracy
    cells = json.loads(raw.read_text())["cells"]
    assert len(cells) == 1 and set(cells[0]["metrics"]) == set(KEYS)
    assert [json.loads(line) for line in lines.read_text().splitlines()] == cells  # each cell as it finished
    assert all(math.isfinite(v) for m in cells[0]["metrics"].values() for v in m.values())
    # a variant's cost: the seconds of the stages it needs beyond what real-only needs (no comparison of times:
    # a GAN variant pays for GAN training and synthesis, relabelling source images does not)
    took, stage_seconds, dag = cells[0]["variant_seconds"], cells[0]["stage_seconds"], read_dag(ROOT)
    assert stage_seconds["train_gan"] > 0 and took["baseline"] > 0
    for v in KEYS:
        assert took[v] == round(sum(stage_seconds.get(s, 0.0) for s in variant_stages(dag, v)), 2), v
    assert {"train_gan", "synthesize"} <= variant_stages(dag, "gan")
    assert not {"pretrain_gan", "meta_gan", "train_gan", "synthesize"} & variant_stages(dag, "source")
    assert [float(r[8]) for r in rows] == [round(took[v]) for v in KEYS]

    # a dataset whose files are missing is skipped with the reason (in-process: nothing runs, so no subprocess)
    monkeypatch.setenv("GANAUG_SHARED_DATA", str(tmp_path / "absent"))
    uplift_main(["--datasets", "fashion", "--shots", "3", "--seeds", "0", "--out", str(doc)])
    again = read_section(doc, "uplift")
    assert "Skipped fashion:" in again and "absent/fashion_mnist_train.npz not found" in again
    assert doc.read_text().count("bench:uplift:start") == 1  # regenerated, not appended


@pytest.mark.heavy
def test_throughput_on_tiny_sizes_reports_ratios_and_rates(tmp_path):
    doc, raw = tmp_path / "benchmarks.md", tmp_path / "throughput.json"
    bench("throughput", ["--rounds", "1", "--gan-steps", "1", "--synth-per-class", "2", "--ft-steps", "2",
                         "--no-compile", "--no-repro", "--set", "gan.g_width=16", "--set", "gan.d_width=16",
                         "--set", "classifier.width=8", "--out", str(doc), "--raw", str(raw)])
    section = read_section(doc, "throughput")
    result = json.loads(raw.read_text())
    gan = result["gan"]
    assert abs(gan["params_reference"] - gan["params_ganaug"]) <= 0.05 * gan["params_ganaug"]
    assert f"ganaug / reference: {gan['ratio_same_threads']:.2f}x with ganaug's default" in section
    assert f"{gan['ratio_bf16']:.2f}x with `gan.precision: bf16`" in section
    # the loop alone: ganaug's step against the reference loop running ganaug's own G and D
    assert gan["ratio_same_nets"] == gan["rates"]["ganaug"] / gan["rates"]["plain_loop_ganaug_nets"]
    assert "running ganaug's G and D" in section and f"**{gan['ratio_same_nets']:.2f}x**" in section
    for part in ("gan", "synthesis", "finetune"):
        rates = result[part]["images_per_s"]
        assert len(rates) >= 2 and all(math.isfinite(v) and v > 0 for v in rates.values()), part
    rows = table_rows(section, "| GAN training step")  # (the rest of the header line, the separator, the rows)
    assert [r[0] for r in rows] == list(gan["images_per_s"]) and rows[0][2] == "1.00x"


def test_measure_process_reports_wall_time_and_peak_rss_of_the_child(tmp_path):
    grab = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.2)"
    m = measure_process([sys.executable, "-c", grab], tmp_path)
    assert m["max_rss_mib"] >= 300 and m["seconds"] >= 0.2
    with pytest.raises(RuntimeError, match="failed"):
        measure_process([sys.executable, "-c", "raise SystemExit(3)"], tmp_path)


def test_write_section_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "b.md"
    write_section(doc, "a", "first A")
    write_section(doc, "b", "only B")
    write_section(doc, "a", "second A")
    text = doc.read_text()
    assert read_section(doc, "a") == "second A" and read_section(doc, "b") == "only B"
    assert "first A" not in text and text.startswith("# ganaug benchmarks")


def test_mean_ci_is_the_student_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert mean_ci([0.5]) == (0.5, None)


@pytest.mark.heavy
def test_gpu_step_smoke_run_on_the_cpu_reports_both_loops(tmp_path):
    doc, raw = tmp_path / "benchmarks.md", tmp_path / "gpu_step.json"
    bench("gpu_step", ["--device", "cpu", "--batch-sizes", "8", "--precisions", "fp32", "--steps", "2", "--rounds", "1",
                       "--set", "gan.g_width=16", "--set", "gan.d_width=16", "--out", str(doc), "--raw", str(raw)])
    (row,) = json.loads(raw.read_text())["rows"]
    assert row["batch_size"] == 8 and row["ganaug"] > 0 and row["reference"] > 0
    assert abs(row["params_reference"] - row["params_ganaug"]) <= 0.05 * row["params_ganaug"]
    rows = table_rows(read_section(doc, "gpu_step"), "| batch")
    assert rows == [["8", "fp32", f"{row['ganaug']:.0f}", f"{row['reference']:.0f}", f"{row['ratio']:.2f}x"]]


def test_a_bench_project_on_a_machine_without_git_is_a_dvc_project_without_scm(tmp_path, monkeypatch):
    from bench.common import make_project
    from pipeline.dag import read_dag

    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no git; make_project runs dvc as `python -m dvc`
    project = make_project(tmp_path / "project", {"data": {"shots": 3}})
    assert not (project / ".git").exists() and "no_scm = True" in (project / ".dvc/config").read_text()
    assert "prepare" in read_dag(project).order  # DVC reads the pipeline there


def test_consumer_recipes_train_on_the_published_dataset_of_the_shared_run(tiny_repro):
    """bench/consumer.py on the tiny run's data/augmented: every recipe trains and scores; the row counts follow
    the rules (the class folders as shipped hold the real shots; hard_all adds every synthetic image)."""
    from bench.consumer import RECIPES, Consumer, consume
    out = consume(tiny_repro.project, Consumer(steps=3, batch_size=8), seed=0)
    assert set(RECIPES) <= set(out) and all(0.0 <= out[r] <= 1.0 for r in RECIPES)
    assert out["kept"]["real"] == 15 and out["kept"]["hard_all"] == 15 + 20  # 5 classes x (3 shots, 4 synthetic)
    assert 15 <= out["kept"]["confident0.7_k1"] <= out["kept"]["confident0.5_k1"] <= out["kept"]["confident0.5_k4"] <= 35


def test_lever_table_pairs_each_cell_with_its_seeds_and_crop_only_with_the_same_real_only_model(tmp_path):
    from bench.levers import Lever, lever_rows

    def cell(dataset: str, seed: int, base: float, gan: float, source: float) -> dict:
        f1 = {"baseline": base, "classical": 0.55, "gan": gan, "source": source, "gan_source": source}
        return {"dataset": dataset, "shots": 10, "seed": seed, "metrics": {k: {"macro_f1": v} for k, v in f1.items()}}
    gains = [0.02, 0.025, 0.03]  # gan - source: clearly above 0
    cells = [cell("a", s, 0.5 + s / 10, 0.6 + g, 0.6) for s, g in enumerate(gains)] + [cell("b", 0, 0.5, 0.4, 0.6)]
    (tmp_path / "raw.json").write_text(json.dumps({"cells": cells}))
    policies = {("a", 10, s): {"none": 0.5 + s / 10, "crop": 0.6} for s in range(3)}  # the same real-only models
    policies[("b", 10, 0)] = {"none": 0.49, "crop": 0.6}  # another real-only model: not paired

    (row_a, signs_a), (row_b, signs_b) = lever_rows(Lever("x", "", ("raw.json", "absent.json")), policies, tmp_path)
    m, h = mean_ci(gains)
    assert row_a[:3] == ["x", "a", 10] and row_a[3] == f"{m:+.3f} [{m - h:+.3f}, {m + h:+.3f}]*"
    assert row_a[5] == row_a[3] and signs_a == {"source": 1, "classical": 1, "crop": 1, "n": 3}
    assert row_b[3] == "-0.200" and row_b[5] == "—" and signs_b["source"] is None and signs_b["crop"] is None
    assert row_a[7] == "`raw.json`"


def test_gpu_workers_summary_counts_ran_cells_and_only_the_samples_taken_while_its_sweep_ran():
    from bench.gpu_workers import merge, phase_summary

    def cell(status: str, seconds: float, gan: float) -> dict:
        return {"status": status, "record": {"seconds": seconds, "stage_seconds": {"train_gan": gan, "evaluate": 5.0}}}
    raw = {"cells": [cell("ran", 300.0, 90.0), cell("ran", 320.0, 110.0), {"status": "failed", "record": {}}]}
    samples = [{"t": 5.0, "busy": 100.0, "memory": 9e4, "processes": [9e4]},  # before the sweep: left out
               {"t": 10.0, "busy": 40.0, "memory": 1800.0, "processes": [900.0, 900.0]},
               {"t": 20.0, "busy": 60.0, "memory": 950.0, "processes": [950.0]}]
    p = phase_summary("batch", 2, 360.0, raw, samples, 10.0, 20.0)
    assert (p["cells"], p["ran"], p["cell_s"], p["cells_per_hour"]) == (3, 2, [300.0, 320.0], 20.0)
    assert (p["gpu_busy_mean"], p["gpu_busy_max"], p["gpu_memory_peak_mib"]) == (50.0, 60.0, 1800.0)
    assert (p["process_memory_peak_mib"], p["gpu_processes_max"]) == (950.0, 2)
    assert p["stage_median_s"] == {"train_gan": 100.0, "evaluate": 5.0}
    run = {"machine": "m", "commands": ["c"], "phases": [p], "raw": {"batch": raw}, "samples": samples}
    assert merge([run, {**run, "phases": [{**p, "phase": "single"}]}])["commands"] == ["c", "c"]
    with pytest.raises(SystemExit, match="different machines"):
        merge([run, {**run, "machine": "other"}])
