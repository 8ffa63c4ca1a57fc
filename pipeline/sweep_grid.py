"""A sweep's grid: which pipeline runs (cells) it holds, each a params.yaml override set and a DVC experiment name.

A grid is the product of its axes: the named datasets (`pipeline/datasets.py`;
none: params.yaml's own data), every `set` key's list of values, and the seeds.
A seed sets `data.seed` and every training section's seed (`SEEDED`), so one seed
changes the shot sample and every random choice, as the benchmarks always did.
From a YAML file:

    name: shots                  # experiment names start with it
    datasets: [mnist04, fashion_rev]
    set:
      data.shots: [5, 10, 20]
    seeds: [0, 1, 2, 3, 4]

or the command line (`--set data.shots=5,10,20 --seeds 0-4 --datasets mnist04`).
A cell's experiment name is the sweep's name, then each axis's value
(`shots-mnist04-shots5-seed0`): a sweep run again finds its finished cells by name
in the experiment store.
"""
from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from pipeline.datasets import scenario
from pipeline.overrides import OverrideError, check_key, parse_assignment

SEEDED = ("classifier", "gan", "synth", "finetune")  # besides data.seed: what one seed sets
MAX_NAME = 100


@dataclass(frozen=True)
class Cell:
    """One pipeline run of a sweep."""
    name: str  # its DVC experiment
    group: str  # the cell without its seed: seeds of one group are paired in the table
    seed: Optional[int]
    axes: dict[str, Any]  # the swept values (dataset, keys) that make this cell
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted params.yaml keys -> values

    def spec(self) -> dict:
        """What a worker needs to run it (plain JSON)."""
        return {"name": self.name, "overrides": self.overrides}


@dataclass(frozen=True)
class Grid:
    name: str
    datasets: tuple[str, ...] = ()
    values: dict[str, list] = field(default_factory=dict)  # key -> its values, in order
    seeds: tuple[int, ...] = ()


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0-4` or `0,1,2` (or both: `0-2,7`) -> seeds."""
    out: list[int] = []
    for part in str(text).split(","):
        try:
            lo, sep, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise OverrideError(f"--seeds {text!r}: expected numbers and ranges such as 0-4 or 0,1,2") from None
    if len(set(out)) != len(out):
        raise OverrideError(f"--seeds {text!r}: a seed is listed twice")
    return tuple(out)


def parse_values(text: str) -> tuple[str, list]:
    """`data.shots=5,10,20` -> ('data.shots', [5, 10, 20]); a YAML list `k=[[1, 2], [3]]` gives its items."""
    key, value = parse_assignment(text)
    if isinstance(value, list) and text.partition("=")[2].strip().startswith("["):
        return key, value
    raw = text.partition("=")[2]
    return key, [parse_assignment(f"{key}={item}")[1] for item in raw.split(",")]


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$")


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise OverrideError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-' (at most 60)")
    return name


def grid_from_file(path: Path) -> Grid:
    """A Grid from a sweep YAML file; OverrideError naming the file and key on bad input."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OverrideError(f"{path}: cannot read the sweep file ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise OverrideError(f"{path}: expected a mapping with name, datasets, set and seeds")
    unknown = sorted(set(raw) - {"name", "datasets", "set", "seeds"})
    if unknown:
        raise OverrideError(f"{path}: unknown key(s) {unknown}; allowed: name, datasets, set, seeds")
    values = raw.get("set") or {}
    if not isinstance(values, dict) or not all(isinstance(v, list) and v for v in values.values()):
        raise OverrideError(f"{path}: set: expected KEY: [values...], e.g. data.shots: [5, 10]")
    for key in values:
        check_key(key)
    seeds = raw.get("seeds") or ()
    seeds = parse_seeds(seeds) if isinstance(seeds, (str, int)) else tuple(int(s) for s in seeds)
    return Grid(check_name(str(raw.get("name") or path.stem)), tuple(raw.get("datasets") or ()), dict(values), seeds)


def grid_from_args(name: str, assignments: Sequence[str], seeds: Optional[str], datasets: Sequence[str],
                   base: Optional[Grid] = None) -> Grid:
    """The command line's grid, on top of a file's (`base`): its lists replace the file's."""
    g = base or Grid(check_name(name))
    values = dict(g.values)
    values.update(parse_values(a) for a in assignments)
    return Grid(check_name(name) if name else g.name, tuple(datasets) or g.datasets, values,
                parse_seeds(seeds) if seeds else g.seeds)


def _short(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def cell_name(sweep: str, axes: dict[str, Any], seed: Optional[int]) -> str:
    """`sweep-<dataset>-<leaf><value>...-seed<k>`, git-ref safe; a hash stands in when it would be too long."""
    parts = [sweep] + [_short(v) if k == "dataset" else f"{k.rsplit('.', 1)[-1]}{_short(v)}" for k, v in axes.items()]
    name = "-".join(parts + ([f"seed{seed}"] if seed is not None else []))
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{sweep}-{digest}" + (f"-seed{seed}" if seed is not None else "")
    return name


def cells(grid: Grid, project: Optional[Path] = None) -> list[Cell]:
    """Every cell of the grid, datasets outermost, seeds innermost (MissingData for an absent dataset)."""
    data = {d: scenario(d, project) for d in grid.datasets}
    axes_lists: list[list[tuple[str, Any]]] = []
    if grid.datasets:
        axes_lists.append([("dataset", d) for d in grid.datasets])
    axes_lists += [[(k, v) for v in vs] for k, vs in grid.values.items()]
    out = []
    for combo in itertools.product(*axes_lists):
        axes = dict(combo)
        base: dict[str, Any] = {}
        if "dataset" in axes:
            base.update({f"data.{k}": v for k, v in data[axes["dataset"]].items()})
        base.update({k: v for k, v in axes.items() if k != "dataset"})
        group = cell_name(grid.name, axes, None)
        for seed in grid.seeds or (None,):
            seeded = {} if seed is None else {"data.seed": seed, **{f"{s}.seed": seed for s in SEEDED}}
            out.append(Cell(cell_name(grid.name, axes, seed), group, seed, axes, {**base, **seeded}))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise OverrideError(f"sweep {grid.name!r}: two cells would share an experiment name; give distinct values")
    return out
