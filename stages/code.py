"""Stage `code`: what each stage's code is, as DVC dependencies -> `build/code/<stage module>.txt`.

For every module of `stages/`, the files of the `stages` and `ganaug` packages that `python -m stages.<name>`
can import (its import closure: every `import` statement of every reached module, those inside functions
included, and the `__init__.py` of each package on the way), one `<sha256>  <path>` line each, as
`sha256sum` writes them. Each stage of dvc.yaml depends on its own file (and on its own module), so an edit
to a building block changes the files of exactly the stages that import it, and DVC reruns those. This stage depends on the
whole `stages/` and `ganaug/` folders and runs first whenever either changes; a new import is picked up
with nothing to update by hand.

One dependency per stage instead of one per imported file also halves `dvc.lock`, which DVC reads and
rewrites around every stage it runs.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from ganaug.io.atomic import atomic_dir

PACKAGES = ("stages", "ganaug")


def module_file(root: Path, name: str) -> Path:
    path = root / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(root: Path, name: str) -> bool:
    path = root / Path(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _imports(root: Path, path: Path) -> set[str]:
    """The `stages.*` and `ganaug.*` modules `path` imports (`from ganaug.nets import gan` names ganaug.nets.gan too)."""
    ours = lambda name: name.split(".")[0] in PACKAGES  # noqa: E731
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if ours(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and ours(node.module):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if _is_module(root, f"{node.module}.{a.name}")}
    return out


def _with_packages(name: str) -> set[str]:
    """`name` and the packages Python imports before it: ganaug.io.data -> ganaug, ganaug.io, ganaug.io.data."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_closure(root: Path, module: str) -> set[str]:
    """Paths (relative to `root`) of every `stages`/`ganaug` module that `module` reaches, itself included."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(set().union(*map(_with_packages, _imports(root, module_file(root, name)) | {name})) - seen)
    return {module_file(root, m).relative_to(root).as_posix() for m in seen}


def code_deps(root: Path) -> dict[str, str]:
    """Stage module name -> its `<sha256>  <path>` lines, for every module of `root/stages`."""
    out = {}
    for path in sorted((root / "stages").glob("*.py")):
        if path.stem == "__init__":
            continue
        files = sorted(import_closure(root, f"stages.{path.stem}"))
        out[path.stem] = "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return out


def main() -> None:
    with atomic_dir("build/code") as tmp:
        for name, text in code_deps(Path.cwd()).items():
            (tmp / f"{name}.txt").write_text(text)


if __name__ == "__main__":
    main()
