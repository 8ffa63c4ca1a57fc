"""What each DVC stage's code reads, from the code itself (for tests/test_stage_deps.py).

- `import_closure(module)`: the files of the `stages` and `ganaug` packages that `python -m <module>` can import,
  as the `code` stage finds them (stages/code.py).
- `params_read(files, section)`: the keys of a `params.yaml` section (fields of its pydantic model)
  that the code could read: attribute names used anywhere in those files that are fields of the section.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from stages import code

ROOT = Path(__file__).resolve().parents[1]
_CMD = re.compile(r"python -m (stages\.\w+)")


def module_file(name: str) -> Path:
    return code.module_file(ROOT, name)


def import_closure(module: str) -> set[str]:
    """Paths (relative to the repo root) of every `stages`/`ganaug` module `module` reaches, itself included
    (the `code` stage's closure, stages/code.py)."""
    return code.import_closure(ROOT, module)


def stage_module(cmd: str) -> str | None:
    m = _CMD.search(cmd)
    return m.group(1) if m else None


def attribute_names(files: set[str]) -> set[str]:
    names = set()
    for rel in files:
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # getattr(p, "name") and model_copy(update={"name": ...})
    return names


def params_read(files: set[str], section_fields: set[str]) -> set[str]:
    return attribute_names(files) & section_fields


def sections_read(stage_file: Path) -> set[str]:
    """The params.yaml sections a stage module takes from `load_params()`: `load_params().X`, or `v.X` where
    `v = load_params(...)`."""
    tree = ast.parse(stage_file.read_text())
    sections, holders = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", None) == "load_params":
            sections.add(node.attr)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", None) == "load_params":
            holders |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in holders:
            sections.add(node.attr)
    return sections
