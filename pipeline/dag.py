"""The stage DAG as DVC sees it (`dvc dag --dot`), in an order the flow can run it.

Nothing here knows ganaug's stages: the names (expanded `foreach` stages such
as `finetune@baseline` included) and their dependencies come from whatever
`dvc.yaml` the repository holds, so there is no second copy of the pipeline.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.dvc_cli import run_dvc

_NODE = re.compile(r'^\s*"(?P<name>(?:[^"\\]|\\.)+)"\s*;\s*$')
_EDGE = re.compile(r'^\s*"(?P<src>(?:[^"\\]|\\.)+)"\s*->\s*"(?P<dst>(?:[^"\\]|\\.)+)"\s*;\s*$')


class DagError(RuntimeError):
    """DVC's DAG could not be read or is not a DAG."""


@dataclass(frozen=True)
class StageDag:
    """Stages in topological order (ties in DVC's own order) and each stage's upstream stages."""

    order: tuple[str, ...]
    upstream: dict[str, tuple[str, ...]]

    def levels(self) -> list[list[str]]:
        """Stages grouped by depth: every stage of a level depends only on earlier levels."""
        depth: dict[str, int] = {}
        for name in self.order:
            depth[name] = 1 + max((depth[u] for u in self.upstream[name]), default=-1)
        groups: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name in self.order:
            groups[depth[name]].append(name)
        return groups


def parse_dot(dot: str) -> StageDag:
    """Parse `dvc dag --dot` output: `"a";` nodes and `"a" -> "b";` edges (a runs before b)."""
    nodes: list[str] = []
    upstream: dict[str, list[str]] = {}
    for line in dot.splitlines():
        if m := _EDGE.match(line):
            src, dst = _unquote(m["src"]), _unquote(m["dst"])
            for name in (src, dst):
                if name not in upstream:
                    nodes.append(name)
                    upstream[name] = []
            upstream[dst].append(src)
        elif m := _NODE.match(line):
            name = _unquote(m["name"])
            if name not in upstream:
                nodes.append(name)
                upstream[name] = []
    return StageDag(order=_toposort(nodes, upstream), upstream={k: tuple(v) for k, v in upstream.items()})


def read_dag(root: Path) -> StageDag:
    """The DAG of the DVC project at `root`."""
    dag = parse_dot(run_dvc(root, "dag", "--dot"))
    if not dag.order:
        raise DagError(f"{root}: dvc.yaml defines no stages")
    return dag


def _toposort(nodes: list[str], upstream: dict[str, list[str]]) -> tuple[str, ...]:
    """Kahn's algorithm, always taking the first ready stage in DVC's listing order."""
    done: list[str] = []
    pending = list(nodes)
    while pending:
        ready = next((n for n in pending if all(u in done for u in upstream[n])), None)
        if ready is None:
            raise DagError(f"dependency cycle among stages {pending}")
        done.append(ready)
        pending.remove(ready)
    return tuple(done)


def _unquote(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)
