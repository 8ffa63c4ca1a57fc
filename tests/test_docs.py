"""The documentation checks itself: commands parse, links resolve, the pipeline picture is the DAG, and no page
talks about how the project was built.

- Every command in a fenced shell block of README.md and docs/*.md that starts with `ganaug`, `dvc` or
  `python -m <module>` (also `.venv/bin/python -m`, `python3 -m`) parses, in process: `ganaug` with the parser of
  the module pyproject.toml names for it, `dvc` with `dvc.cli.parse_args`, `python -m <module>` with the module's
  own argparse parser (its `build_parser()`, or `parse_args(argv)` / `main(argv)` stopped right after parsing).
  Commands with `<placeholders>` are exempt, and so are third-party modules (`pytest`, `pip`, `venv`).
- Every relative link and image resolves to a file, and a `#anchor` into a markdown page to one of its headings.
- The README's mermaid block equals `dvc dag --mermaid`.
- No page names a round of work; README.md has at most 250 lines.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HISTORY = ROOT / "docs" / "history.md"
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
EXTERNAL_MODULES = {"pytest", "pip", "venv"}  # other projects' command lines, not ours to check
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
FENCE = re.compile(r"^(```+|~~~+)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>]*>")
SEPARATORS = {"&&", "||", "|", ";", "&"}

sys.path.insert(0, str(ROOT))


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(2).lower(), m.group(3)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The page without its fenced blocks."""
    return FENCE.sub("", text)


def shell_commands(body: str) -> list[list[str]]:
    """The simple commands of a shell block, as argument lists: continuation lines joined, comments dropped, split at
    `&&`, `;`, `|`, leading `VAR=value` assignments removed."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # not shell (an unbalanced quote in a heredoc or prose): nothing of ours to check
            continue
        current: list[str] = []
        for tok in tokens:
            if tok in SEPARATORS or tok.endswith(";"):
                if tok.endswith(";") and tok != ";":
                    current.append(tok[:-1])
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
    out = []
    for cmd in commands:
        while cmd and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            out.append(cmd)
    return out


def checked_commands() -> list[tuple[str, str, list[str]]]:
    """(page, command line, argv) of every command this test parses."""
    found = []
    for page in PAGES:
        for lang, body in fenced_blocks(page.read_text(encoding="utf-8")):
            if lang not in SHELL_LANGS:
                continue
            for cmd in shell_commands(body):
                prog = cmd[0]
                python_m = (prog in PYTHONS or prog.endswith("/bin/python")) and len(cmd) > 2 and cmd[1] == "-m"
                if prog in ("ganaug", "dvc") or python_m:
                    found.append((rel(page), " ".join(cmd), cmd))
    return found


class _Parsed(Exception):
    """Raised right after a module's parser accepted its arguments, so that nothing runs."""


def _parse_with_module(module_name: str, args: list[str]) -> None:
    spec = importlib.util.find_spec(module_name)
    assert spec is not None, f"no module {module_name}"
    if spec.submodule_search_locations:  # a package: python -m runs its __main__
        return _parse_with_module(module_name + ".__main__", args)
    source = Path(spec.origin).read_text(encoding="utf-8")
    if "argparse" not in source:
        # a module without a parser (it runs at import, or reads nothing from the command line): no arguments
        assert not args, f"{module_name} takes no arguments"
        return
    if module_name in ("pipeline.__main__",):  # `python -m pipeline` is the ganaug command
        return _parse_ganaug(args)
    module = importlib.import_module(module_name)
    for name in ("build_parser", "_parser", "make_parser"):
        builder = getattr(module, name, None)
        if callable(builder):
            builder().parse_args(args)
            return
    entry = getattr(module, "parse_args", None) or getattr(module, "main", None)
    assert callable(entry), f"{module_name}: no parser builder, parse_args(argv) or main(argv) to parse with"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    saved_argv = sys.argv
    sys.argv = [module_name, *args]
    try:
        try:
            entry(args)
        except TypeError:  # main() without an argv parameter reads sys.argv
            entry()
    except _Parsed:
        return
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved_argv
    pytest.fail(f"{module_name}: its entry point returned without parsing its arguments")


def _parse_ganaug(args: list[str]) -> None:
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["ganaug"]
    module = importlib.import_module(target.split(":")[0])
    module.build_parser().parse_args(args)


def _parse(argv: list[str]) -> None:
    if argv[0] == "ganaug":
        return _parse_ganaug(argv[1:])
    if argv[0] == "dvc":
        from dvc.cli import parse_args

        parse_args(argv[1:])
        return
    module = argv[2]
    if module.split(".")[0] in EXTERNAL_MODULES:
        return
    return _parse_with_module(module, argv[3:])


def test_commands_in_the_docs_parse():
    commands = checked_commands()
    assert len(commands) > 20, "the command extraction found almost nothing: is it broken?"
    failures = []
    for page, line, argv in commands:
        if PLACEHOLDER.search(line):
            continue
        try:
            _parse(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                failures.append(f"{page}: `{line}`: exit {exc.code}")
        except Exception as exc:  # dvc's DvcParserError, an assertion above, an import error
            failures.append(f"{page}: `{line}`: {type(exc).__name__}: {exc}")
    assert not failures, "commands in the docs that do not parse:\n" + "\n".join(failures)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # links keep their text
    text = text.lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", prose(page.read_text(encoding="utf-8")), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_relative_links_resolve():
    link = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
    failures = []
    for page in PAGES:
        for m in link.finditer(prose(page.read_text(encoding="utf-8"))):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                failures.append(f"{rel(page)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                failures.append(f"{rel(page)}: {target}: no heading with that anchor")
    assert not failures, "broken links:\n" + "\n".join(failures)


def test_readme_pipeline_picture_is_the_dag():
    from dvc.commands.dag import _build, _show_mermaid
    from dvc.repo import Repo

    blocks = [body for lang, body in fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8")) if lang == "mermaid"]
    assert len(blocks) == 1, "README.md should hold one mermaid block: the output of `dvc dag --mermaid`"
    with Repo(str(ROOT)) as repo:
        expected = _show_mermaid(_build(repo))  # as `dvc dag --mermaid` prints it

    def norm(text: str) -> list[str]:
        return [line.strip() for line in text.strip().splitlines()]

    assert norm(blocks[0]) == norm(expected), "README's mermaid block differs from `dvc dag --mermaid`: paste its output"


ORDINAL = (r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
           r"fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|\d+(?:st|nd|rd|th))")
ROUND_OF_WORK = [
    re.compile(ORDINAL + r"[- ](?:session|round|sprint|iteration)s?\b", re.I),
    re.compile(r"\brounds? of work\b", re.I),
    re.compile(r"\bsprints?\b", re.I),
    re.compile(r"\b(?:this|next|last|previous) (?:session|round)\b", re.I),
]
# "session" is a product term in these senses only
SESSION_OK = re.compile(r"\b(?:pytest|prefect|database|sqlalchemy|sqlite|test|http|client|db|ssh|browser|login) sessions?\b", re.I)
# the order in which things were done belongs on the history page only
ORDER_OF_WORK = [
    re.compile(r"\bfor the first time\b", re.I),
    re.compile(r"\bthe old (?:default|behaviou?r)\b", re.I),
    re.compile(r"\bwas briefly the default\b", re.I),
    re.compile(r"\bfrom this .{0,20} on\b", re.I),
]


def test_no_page_names_a_round_of_work():
    failures = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        patterns = ROUND_OF_WORK + ([] if page == HISTORY else ORDER_OF_WORK)
        for n, line in enumerate(text.splitlines(), 1):
            hits = [m.group(0) for p in patterns for m in p.finditer(line)]
            hits += [m.group(0) for m in re.finditer(r"\bsessions?\b", SESSION_OK.sub("", line), re.I)]
            failures += [f"{rel(page)}:{n}: {hit!r}" for hit in hits]
    assert not failures, "pages that describe how the project was built:\n" + "\n".join(failures)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines (at most 250: details belong in docs/)"
