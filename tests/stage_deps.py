"""What each DVC stage's code depends on, read from the code itself (for tests/test_stage_deps.py).

- `import_closure(module)`: the files of the `stages` and `ganaug` packages that `python -m <module>` can import
  (every `import` statement of every reached module, including those inside functions, and the
  `__init__.py` of every package on the way).
- `params_read(files, section)`: the keys of a `params.yaml` section (fields of its pydantic model)
  that the code could read: attribute names used anywhere in those files that are fields of the section.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CMD = re.compile(r"python -m (stages\.\w+)")
PACKAGES = ("stages", "ganaug")


def module_file(name: str) -> Path:
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _imports(path: Path) -> set[str]:
    """The `stages.*` and `ganaug.*` modules `path` imports (`from ganaug.nets import gan` names ganaug.nets.gan too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if _ours(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _ours(node.module):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")}
    return out


def _with_packages(name: str) -> set[str]:
    """`name` and the packages Python imports before it: ganaug.io.data -> ganaug, ganaug.io, ganaug.io.data."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_closure(module: str) -> set[str]:
    """Paths (relative to the repo root) of every `stages`/`ganaug` module `module` reaches, itself included."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(set().union(*map(_with_packages, _imports(module_file(name)) | {name})) - seen)
    return {str(module_file(m).relative_to(ROOT)) for m in seen}


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


def rewrite_code_deps(dvc_yaml: Path) -> None:
    """Rewrite every stage's `.py` deps in `dvc_yaml` as its import closure (other lines kept as they are).

    After adding an import: `.venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); from stage_deps import *; rewrite_code_deps(ROOT / 'dvc.yaml')"`
    """
    import yaml

    text = dvc_yaml.read_text()
    closures = {}
    for name, st in yaml.safe_load(text)["stages"].items():
        body = st.get("do", st)
        closures[name] = sorted(p for p in import_closure(stage_module(body["cmd"])) if not p.endswith("__init__.py"))
    out, stage, lines, i = [], None, text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  (\w+):\s*$", line):
            stage = m.group(1)
        if (dm := re.match(r"^(\s+)deps:\s*$", line)) and stage in closures:
            out.append(line)
            indent, i = dm.group(1) + "  ", i + 1
            while i < len(lines) and re.match(rf"^{indent}- (stages|ganaug)/\S+\.py\s*$", lines[i]):
                i += 1
            out += [f"{indent}- {p}" for p in closures[stage]]
            continue
        out.append(line)
        i += 1
    dvc_yaml.write_text("\n".join(out))
