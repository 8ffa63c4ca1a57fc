"""Write outputs so that a killed stage never leaves a half-written file or folder.

Everything is written to a temporary sibling first (a folder
`.<name>.tmp-<pid>-<random>`; for a file, the file `<name>` inside it) and
renamed into place at the end (`os.replace` is atomic on one file system).
A process killed mid-write (SIGKILL runs no cleanup) leaves only such a hidden
temporary, never a partial `<name>`; the next write of the same output removes
temporaries whose process is gone.

A folder that already exists is swapped with the new one in one step
(`renameat2(RENAME_EXCHANGE)` on Linux), so there is no moment without an
output. Where the OS or file system has no exchange, the old folder is moved
aside to `.<name>.old-<pid>` first; if the writer is killed in that window, the
next writer (or `remove_stale_temporaries`) puts it back instead of deleting it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporaries of `path` (`.<name>.tmp-<pid>-*`, `.<name>.old-<pid>`) whose process no longer runs."""
    path = Path(path)
    found = []
    for kind in ("tmp", "old"):
        for p in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"):
            pid = p.name[len(f".{path.name}.{kind}-"):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                found.append(p)
    return sorted(found)


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete what killed writers of `path` left behind; an old output moved aside is put back if `path` is gone."""
    path = Path(path)
    for p in stale_temporaries(path):
        if ".old-" in p.name[len(path.name) + 1:] and not (path.exists() or path.is_symlink()):
            os.replace(p, path)  # killed between moving the old output aside and moving the new one in
        else:
            _remove(p)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where the OS or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); outputs get the usual mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_dir() and not path.is_symlink() and exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old output
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    _remove(old)
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces `path` when the block succeeds.

    The temporary has the output's own name, inside a hidden temporary folder,
    so writers that record the file name (torch.save names its archive after
    it) or infer the format from the suffix behave as if writing `path`, and the
    same content gives the same bytes every run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        tmp.touch(0o666 & ~_umask())
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(path: str | Path, obj: object) -> None:
    """Write `obj` as pretty, key-sorted JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
