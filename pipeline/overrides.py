"""params.yaml overrides for one run: `key.path=value`, as `dvc exp run --set-param` takes them.

Keys are dotted paths into params.yaml (`data.shots`, `gan.steps`); values are
YAML (`5`, `0.001`, `[5, 6]`, `null`). Before any stage runs, the overrides are
merged into the project's current params.yaml and the result is validated by
the project's own schema (`ganaug.config.params.parse_params`), so a bad key or value
is refused with a message that names it. They are written (comments kept) only
into the params.yaml of the run's experiment workspace, never the user's.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml
from ruamel.yaml import YAML

from ganaug.config.errors import UserError
from ganaug.config.params import ParamsError, parse_params

PARAMS_FILE = "params.yaml"


class OverrideError(UserError):
    """An override that is malformed or does not fit the params schema; the message names the key."""


def parse_assignment(text: str) -> tuple[str, Any]:
    """`'data.shots=5'` -> `('data.shots', 5)`; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OverrideError(f"override {text!r}: expected KEY=VALUE, e.g. data.shots=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise OverrideError(f"override {key}: value {raw!r} is not valid YAML") from None
    check_key(key)
    return key, value


def check_key(key: str) -> None:
    if not key or any(not part.strip() for part in key.split(".")):
        raise OverrideError(f"override {key!r}: keys are dotted paths such as data.shots")


def merged(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `params` with every `a.b.c: value` override set."""
    out = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        check_key(key)
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OverrideError(f"override {key}: {'.'.join(parts[:i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def read_params(root: Path) -> dict[str, Any]:
    path = root / PARAMS_FILE
    if not path.is_file():
        raise OverrideError(f"{path}: params file not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise OverrideError(f"{path}: expected a mapping of sections")
    return raw


def validate_overrides(root: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The params `root/params.yaml` would hold with `overrides`; OverrideError naming the bad key."""
    params = merged(read_params(root), overrides)
    try:
        parse_params(params, source="params.yaml with overrides")
    except ParamsError as exc:
        raise OverrideError(str(exc)) from None
    return params


def write_overrides(params_file: Path, overrides: Mapping[str, Any]) -> None:
    """Set the overrides in `params_file` in place, keeping its comments and layout."""
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(params_file.read_text()) or {}
    for key, value in overrides.items():
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node:
                node[part] = {}
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    with params_file.open("w") as fh:
        rt.dump(doc, fh)


def format_overrides(overrides: Mapping[str, Any]) -> str:
    """`data.shots=5 gan.steps=20`, values as YAML flow scalars."""
    return " ".join(f"{k}={_flow(v)}" for k, v in overrides.items()) or "(none)"


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()
