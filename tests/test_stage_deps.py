"""dvc.yaml declares exactly what each stage's code depends on (issue #13: stale outputs reported as up to date).

The stage module's import closure (`tests/stage_deps.py`) must equal the `.py` deps of its stage, and the
params keys its code can read must equal its declared params, less the keys listed here with the reason
they cannot change the stage's result. A new import or a new params key read without a dvc.yaml change
fails here, as does a dep or key that no longer matters.
"""
from __future__ import annotations

import sys

import pytest
import yaml

from conftest import DVC, pipeline_env, run
from stage_deps import ROOT, attribute_names, import_closure, module_file, sections_read, stage_module
from ganaug.config.params import Params

SECTIONS = {name: set(f.annotation.model_fields) for name, f in Params.model_fields.items()}
STREAM_KEYS = {"synth_batch", "synth_weight", "synth_labels", "mixed_hard_weight", "temperature", "teacher",
               "schedule", "first_fraction", "synth_augment", "source_images", "teacher_seeds", "real_augment"}
# keys the code reads that cannot change a stage's outputs, with the reason
NO_EFFECT = {"gan.checkpoint_every", "finetune.checkpoint_every", "restore.checkpoint_every"}  # only how often a resumable checkpoint is written
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


@pytest.mark.parametrize("name", list(stages()))
def test_code_deps_of_a_stage_are_its_import_closure(name):
    body = stages()[name]
    closure = {f for f in import_closure(stage_module(body["cmd"])) if not f.endswith("__init__.py")}
    declared = {d for d in body["deps"] if d.endswith(".py")}
    assert not closure - declared, f"{name}: imports not in its deps: {sorted(closure - declared)}"
    assert not declared - closure, f"{name}: deps it never imports: {sorted(declared - closure)}"


def test_the_package_init_holds_no_code():
    """Package `__init__.py` files are in the closures and no stage's deps: they must stay empty of code."""
    import ast
    inits = sorted([ROOT / "stages/__init__.py", *(ROOT / "ganaug").rglob("__init__.py")])
    assert len(inits) == 9  # stages, ganaug and its config, io, nets, train, judge, tools, restore
    for path in inits:
        body = ast.parse(path.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), path  # a docstring at most


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
    """The coverage test above is not vacuous: without data.py in train_gan's deps it fails."""
    import stage_deps
    text = (ROOT / "dvc.yaml").read_text()
    broken = text.replace("      - ganaug/io/data.py\n", "", 1)
    assert broken != text
    (tmp_path / "dvc.yaml").write_text(broken)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    first = next(n for n, b in stages().items() if "ganaug/io/data.py" in stage_deps.import_closure(stage_module(b["cmd"]))
                 and "ganaug/io/data.py" not in b["deps"])
    with pytest.raises(AssertionError, match="imports not in its deps: \\['ganaug/io/data.py'\\]"):
        test_code_deps_of_a_stage_are_its_import_closure(first)


def test_editing_a_building_block_reruns_exactly_the_stages_that_import_it(tiny_repro_copy):
    project = tiny_repro_copy
    target = project / "ganaug/judge/metrics.py"
    target.write_text(target.read_text() + "\n# an edit\n")
    proc = run(DVC + ["status", "--json"], project, env=pipeline_env())
    stale = set(yaml.safe_load(proc.stdout))
    importers = set()
    for name, body in stages().items():
        if "ganaug/judge/metrics.py" in import_closure(stage_module(body["cmd"])):
            raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
            importers |= {f"{name}@{k}" for k in raw["foreach"]} if "foreach" in raw else {name}
    assert importers == {"evaluate", "gan_metrics", "restore"}
    assert stale == importers, proc.stdout
