"""Named data scenarios for sweeps and benchmarks: the `data:` params of each, by name.

`digits` is embedded (scikit-learn); the others read the shared data folder,
`GANAUG_SHARED_DATA` or else `../shared/data` beside the project, as `.npz` files
of (x, y). The development scenarios, on which defaults are chosen, are `mnist04`
(MNIST 0-4 -> 5-9) and `fashion_rev` (Fashion-MNIST 5-9 -> 0-4); `fashion`,
`digits` and `mnist_usps` are the reported ones.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ganaug.config.errors import UserError

REPORTED = ("fashion", "digits", "mnist_usps")
DEVELOPMENT = ("mnist04", "fashion_rev")
LOW, HIGH = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


class MissingData(UserError):
    """A scenario's files are not in the shared data folder; the message names the file and the variable."""


def shared_data_dir(project: Optional[Path] = None) -> Path:
    """`GANAUG_SHARED_DATA`, else `../shared/data` beside the project (default: this checkout)."""
    root = project or Path(__file__).resolve().parents[1]
    return Path(os.environ.get("GANAUG_SHARED_DATA") or root.parent / "shared" / "data").resolve()


def shared_file(name: str, project: Optional[Path] = None) -> str:
    """The path of a file of the shared data folder, or MissingData naming what is missing and how to point to it."""
    path = shared_data_dir(project) / name
    if not path.is_file():
        raise MissingData(f"{path} not found (set GANAUG_SHARED_DATA to the folder holding {name})")
    return str(path)


def scenario(name: str, project: Optional[Path] = None) -> dict:
    """The `data:` params of a named scenario (MissingData when its files are absent)."""
    def same(stem: str, source: list[int], target: list[int]) -> dict:
        train = shared_file(f"{stem}_train.npz", project)
        return {"source": train, "target": train, "target_test": shared_file(f"{stem}_test.npz", project),
                "source_classes": source, "target_classes": target, "image_size": 16}

    if name == "digits":
        return {"source": "digits", "target": "digits", "target_test": None,
                "source_classes": LOW, "target_classes": HIGH, "image_size": 16}
    if name == "fashion":
        return same("fashion_mnist", LOW, HIGH)
    if name == "mnist04":
        return same("mnist", LOW, HIGH)
    if name == "fashion_rev":
        return same("fashion_mnist", HIGH, LOW)
    if name == "mnist_usps":
        return {"source": shared_file("mnist_train.npz", project), "target": shared_file("usps_train.npz", project),
                "target_test": shared_file("usps_test.npz", project), "source_classes": None, "target_classes": None,
                "image_size": 16}
    raise UserError(f"dataset {name!r}: unknown; allowed: {', '.join(REPORTED + DEVELOPMENT)}")
