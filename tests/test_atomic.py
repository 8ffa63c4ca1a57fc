"""Outputs are written to a temporary sibling and renamed at the end: a writer killed with SIGKILL
leaves no partial output, and the next write removes what it left behind."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tool_env
from ganaug.io.atomic import atomic_dir, atomic_file, remove_stale_temporaries, stale_temporaries, write_json

WRITER = """
import sys, time
from pathlib import Path
from ganaug.io.atomic import atomic_dir, atomic_file
kind, target = sys.argv[1], Path(sys.argv[2])
with (atomic_dir if kind == "dir" else atomic_file)(target) as tmp:
    if kind == "dir":
        (tmp / "half.bin").write_bytes(b"x" * 4096)
    else:
        tmp.write_bytes(b"x" * 4096)
    print("writing", flush=True)
    time.sleep(120)
"""


def start_writer(kind: str, target: Path) -> subprocess.Popen:
    """A process stopped in the middle of writing `target`."""
    env = {**tool_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def hidden_siblings(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*"))


def test_atomic_dir_replaces_the_output_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("two, half-written")
            raise RuntimeError("stage failed")
    assert (out / "a.txt").read_text() == "one" and sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced, not merged
    assert hidden_siblings(out) == []


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    out = tmp_path / "m.json"
    write_json(out, {"a": 1})
    with pytest.raises(ValueError):
        with atomic_file(out) as tmp:
            tmp.write_text("{ partial")
            raise ValueError("boom")
    assert out.read_text() == '{\n  "a": 1\n}\n' and hidden_siblings(out) == []


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_sigkill_mid_write_leaves_no_output_and_the_next_write_cleans_up(tmp_path, kind):
    out = tmp_path / "data" / ("augmented" if kind == "dir" else "model.pt")
    proc = start_writer(kind, out)
    kill(proc)
    assert not out.exists()  # nothing a downstream `dvc import` could pick up
    [left] = hidden_siblings(out)
    assert left.name.startswith(f".{out.name}.tmp-{proc.pid}-")
    assert stale_temporaries(out) == [left]
    if kind == "dir":
        with atomic_dir(out) as tmp:
            (tmp / "done.txt").write_text("ok")
        assert (out / "done.txt").read_text() == "ok"
    else:
        with atomic_file(out) as tmp:
            tmp.write_text("ok")
        assert out.read_text() == "ok"
    assert hidden_siblings(out) == []


def test_sigkill_while_replacing_keeps_the_previous_output(tmp_path):
    out = tmp_path / "prepared"
    with atomic_dir(out) as tmp:
        (tmp / "v1.txt").write_text("v1")
    kill(start_writer("dir", out))
    assert sorted(p.name for p in out.iterdir()) == ["v1.txt"]


def test_temporaries_of_a_running_writer_are_left_alone(tmp_path):
    out = tmp_path / "augmented"
    proc = start_writer("dir", out)
    try:
        [live] = hidden_siblings(out)
        assert stale_temporaries(out) == []
        remove_stale_temporaries(out)
        assert live.is_dir()
    finally:
        kill(proc)
    assert stale_temporaries(out) == [live]


def test_outputs_get_the_usual_permissions_not_the_temporaries_private_ones(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
        write_json(tmp_path / "m.json", {})
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_torch_save_through_atomic_file_gives_the_same_bytes_every_time(tmp_path):
    """torch.save names its archive after the file; the temporary must not leak a random name into it."""
    import torch

    blobs = []
    for _ in range(2):
        with atomic_file(tmp_path / "gan.pt") as tmp:
            torch.save({"w": torch.arange(6.0)}, tmp)
        blobs.append((tmp_path / "gan.pt").read_bytes())
    assert blobs[0] == blobs[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_existing_folder_is_swapped_in_one_step(tmp_path):
    from ganaug.io.atomic import exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "from_a").write_text("a")
    (b / "from_b").write_text("b")
    if not exchange(a, b):
        pytest.skip("no atomic exchange on this OS or file system (the move-aside path is tested below)")
    assert [p.name for p in a.iterdir()] == ["from_b"] and [p.name for p in b.iterdir()] == ["from_a"]


def test_a_kill_between_moving_aside_and_moving_in_loses_no_output(tmp_path):
    """The window of the fallback: the old output moved aside, the new one not yet in, the writer killed."""
    out = tmp_path / "augmented"
    pid = _dead_pid()
    old = tmp_path / f".augmented.old-{pid}"
    old.mkdir()
    (old / "v1.txt").write_text("v1")
    tmp = tmp_path / f".augmented.tmp-{pid}-x"
    tmp.mkdir()
    (tmp / "v2-partial.txt").write_text("v2")
    with pytest.raises(ValueError):  # the next writer fails: the previous output must still be there
        with atomic_dir(out):
            raise ValueError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["v1.txt"] and hidden_siblings(out) == []
    with atomic_dir(out) as new:
        (new / "v3.txt").write_text("v3")
    assert sorted(p.name for p in out.iterdir()) == ["v3.txt"] and hidden_siblings(out) == []
