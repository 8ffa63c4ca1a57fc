"""dvc.yaml declares exactly what each stage's code depends on (issue #13: stale outputs reported as up to date).

Code: each stage depends on its own module and on its own file of the `code` stage (stages/code.py: its import closure with the
files' hashes), which lists every project file the stage loads; an edit to a building block reruns exactly
the stages that import it. Params: the keys a stage's code can read must equal its declared params, less the
keys listed here with the reason they cannot change the stage's result; a new key read without a dvc.yaml
change fails here, as does a key that no longer matters.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from conftest import DVC, pipeline_env, run
from stage_deps import ROOT, attribute_names, import_closure, module_file, sections_read, stage_module
from ganaug.config.params import Params

SECTIONS = {name: set(f.annotation.model_fields) for name, f in Params.model_fields.items()}
STREAM_KEYS = {"synth_batch", "synth_weight", "synth_labels", "mixed_hard_weight", "temperature", "teacher",
               "schedule", "first_fraction", "synth_augment", "source_images", "teacher_seeds", "real_augment"}
# keys the code reads that cannot change a stage's outputs, with the reason
NO_EFFECT = {"gan.checkpoint_every", "finetune.checkpoint_every", "restore.checkpoint_every",
             "repair.checkpoint_every", "dagan.checkpoint_every"}  # only how often a resumable checkpoint is written
NOT_USED = {
    # source_params() replaces these with fixed values for the source run
    "pretrain_gan": {f"gan.{k}" for k in ("steps", "freeze", "average_last", "freeze_d_blocks", "alternate_steps",
                                           "average_every")},
    # no --extra in this foreach group: the stream keys go into FitConfig but no stream is drawn
    "finetune": {f"finetune.{k}" for k in STREAM_KEYS},
    # its real batch takes finetune.real_augment; the classical recipe's policy reaches it through the teachers
    "distill": {"finetune.augment"},
    # the seed teachers are real-shot variants too: no stream (teacher and teacher_seeds say which to train)
    "teachers": {f"finetune.{k}" for k in STREAM_KEYS - {"teacher", "teacher_seeds"}},
    # CAS fine-tunes on one set, with no stream and no classical augmentation
    "gan_metrics": {f"finetune.{k}" for k in STREAM_KEYS | {"augment"}},
    # inner_config() replaces these for every task (steps, learning rates, seed, no freezing or averaging)
    "meta_gan": {f"gan.{k}" for k in ("steps", "lr_g", "lr_d", "lr_schedule", "lr_gamma", "freeze", "freeze_d_blocks",
                                       "alternate_steps", "average_last", "average_every", "seed", "init_checkpoint",
                                       "source_steps")} | {f"data.{k}" for k in SECTIONS["data"] - {"shots", "target_classes"}}
                | {"meta.checkpoint_every"},
    # read only by params validation (restore.enabled needs a corruption to undo), which cannot change the sets
    "prepare": {"data.corrupt", "data.corrupt_on"},
    # works on the prepared arrays (the keys that shaped them reach it through data/prepared); its downstream
    # check fine-tunes the real shots with no stream and no classical augmentation
    "restore": {f"data.{k}" for k in SECTIONS["data"] - {"corrupt", "corrupt_on", "seed"}}
               | {f"finetune.{k}" for k in STREAM_KEYS | {"augment"}},
    # reads only synth.kind: which generator kind to train (the rest of synth is how synthesize samples)
    "train_repair": {f"synth.{k}" for k in SECTIONS["synth"] - {"kind"}},
    "train_gan": {f"synth.{k}" for k in SECTIONS["synth"] - {"kind"}},
    "train_dagan": {f"synth.{k}" for k in SECTIONS["synth"] - {"kind"}},
}
# stages that depend on every key of params.yaml (`- params.yaml:` in dvc.yaml), with the reason
WHOLE_FILE = {"concat": "its datasheet records the whole params.yaml"}
ALL_KEYS = {f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys}


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: st.get("do", st) for name, st in raw.items()}


def expand(declared: list) -> set[str]:
    out = set()
    for key in declared:
        if key == {"params.yaml": None}:  # the whole file
            out |= ALL_KEYS
        else:
            out |= {f"{key}.{f}" for f in SECTIONS[key]} if key in SECTIONS else {key}
    return out


CODE = "build/code"  # the `code` stage's output: <stage module>.txt for each (stages/code.py)


@pytest.mark.parametrize("name", list(stages()))
def test_a_stage_depends_on_its_module_and_its_code_file_and_no_other_code(name):
    body = stages()[name]
    if name == "code":
        assert body["deps"] == ["stages", "ganaug"] and body["outs"] == [CODE]
        return
    module = stage_module(body["cmd"]).split(".")[-1]
    own = [f"stages/{module}.py", f"{CODE}/{module}.txt"]  # the module itself, and its closure's hashes
    for dep in own:
        assert dep in body["deps"], f"{name}: {dep} not in its deps"
    others = [d for d in body["deps"] if d not in own and (d.endswith(".py") or d.startswith(CODE))]
    assert not others, f"{name}: code deps other than its own module and file: {others}"


# Imports each stage module afresh (its project modules only; the others stay loaded) and prints the project
# files Python loaded, per stage.
_RUNTIME_IMPORTS = """
import importlib, json, sys
ours = lambda m: m.split(".")[0] in ("stages", "ganaug")
loaded = {}
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if ours(m)]:
        del sys.modules[m]
    importlib.import_module(name)
    loaded[name] = sorted(sys.modules[m].__file__ for m in sys.modules if ours(m))
print(json.dumps(loaded))
"""


def test_a_stage_code_file_lists_every_project_file_the_stage_loads_with_its_hash():
    """The `code` stage's files against Python itself: every project module that importing a stage loads is
    listed in that stage's file (the list also has the modules imported inside functions), with its sha256."""
    import hashlib
    import json
    import subprocess

    from stages.code import code_deps

    files = code_deps(ROOT)
    modules = sorted({stage_module(b["cmd"]) for b in stages().values()})
    assert sorted(files) == sorted(m.split(".")[-1] for m in modules)  # one file per stage module
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_IMPORTS, *modules], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    for module, loaded in json.loads(proc.stdout).items():
        listed = dict(reversed(line.split("  ", 1)) for line in files[module.split(".")[-1]].splitlines())
        missing = {str(Path(f).relative_to(ROOT)) for f in loaded} - set(listed)
        assert not missing, f"{module}: loads {sorted(missing)}, not in its code file"
        assert all(hashlib.sha256((ROOT / f).read_bytes()).hexdigest() == h for f, h in listed.items())


@pytest.mark.parametrize("name", list(stages()))
def test_params_of_a_stage_are_the_keys_its_code_reads(name):
    body = stages()[name]
    module = stage_module(body["cmd"])
    attrs = attribute_names(import_closure(module))
    read = {f"{s}.{k}" for s in sections_read(module_file(module)) for k in SECTIONS[s] & attrs}
    expected = ALL_KEYS if name in WHOLE_FILE else read - NO_EFFECT - NOT_USED.get(name, set())
    declared = expand(body.get("params", []))
    assert not expected - declared, f"{name}: reads params not declared: {sorted(expected - declared)}"
    assert not declared - expected, f"{name}: declares params that cannot change it: {sorted(declared - expected)}"


def test_the_check_fails_when_a_dependency_is_removed(tmp_path, monkeypatch):
    """The dependency test above is not vacuous: without build/code/train_gan.txt in train_gan's deps it fails."""
    text = (ROOT / "dvc.yaml").read_text()
    broken = text.replace(f"      - {CODE}/train_gan.txt\n", "", 1)
    assert broken != text
    (tmp_path / "dvc.yaml").write_text(broken)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=f"train_gan: {CODE}/train_gan.txt not in its deps"):
        test_a_stage_depends_on_its_module_and_its_code_file_and_no_other_code("train_gan")


def test_editing_a_building_block_reruns_exactly_the_stages_that_import_it(tiny_repro_copy):
    project = tiny_repro_copy
    target = project / "ganaug/judge/metrics.py"
    target.write_text(target.read_text() + "\n# an edit\n")
    status = lambda: set(yaml.safe_load(run(DVC + ["status", "--json"], project, env=pipeline_env()).stdout))  # noqa: E731
    assert status() == {"code"}  # the folders it reads changed
    run(DVC + ["repro", "code"], project, env=pipeline_env())
    importers = set()
    for name, body in stages().items():
        if "ganaug/judge/metrics.py" in import_closure(stage_module(body["cmd"])):
            raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
            importers |= {f"{name}@{k}" for k in raw["foreach"]} if "foreach" in raw else {name}
    assert importers == {"evaluate", "gan_metrics", "restore"}
    assert status() == importers  # their code files changed, and no other's
