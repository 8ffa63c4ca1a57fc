"""Interrupted training resumes from its last checkpoint and ends bit-identical to an uninterrupted run (CPU).

- `fit` (pretrain / finetune): interrupted after a checkpoint plus a few steps, resumed in-process.
- GAN training: `python -m stages.train_gan` killed with SIGKILL part-way, restarted, compared tensor by tensor
  with an uninterrupted run in another folder. The killed process is a plain one; the restarted and the
  uninterrupted runs are forked from the tests' fork server (tests/forkserver.py), which gives a plain
  process's outputs byte for byte (tests/test_reproducible.py).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from conftest import ROOT, forked_env, forked_python, tool_env
from ganaug.config.params import DataParams
from ganaug.io.atomic import stale_temporaries
from ganaug.io.data import LoadOptions, load_digits_set, to_float
from ganaug.train.fit import FitConfig, fit, fingerprint
from stages.prepare import prepare

CPU = torch.device("cpu")


# ---------------------------------------------------------------- fit

class DropoutNet(nn.Module):
    """Small classifier with BatchNorm and dropout, so both the global torch RNG and buffers matter."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def flip_some(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips drawn from fit's generator."""
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


@pytest.fixture(scope="module")
def digits_xy():
    d = load_digits_set(LoadOptions(16, 1))
    return to_float(d.x[:120]), torch.as_tensor(d.y[:120])


def new_model() -> nn.Module:
    torch.manual_seed(0)
    return DropoutNet()


CFG = FitConfig(steps=30, batch_size=16, lr=5e-3, weight_decay=5e-4, backbone_lr_mult=0.5, seed=3, checkpoint_every=10)


def run_fit(x, y, cfg=CFG, **kw):
    model = new_model()
    torch.manual_seed(1234)  # the global RNG (dropout) starts the same in every run
    summary = fit(model, x, y, cfg, CPU, augment=flip_some, **kw)
    return model, summary


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fit_resumed_after_interruption_is_bit_identical(tmp_path, digits_xy):
    x, y = digits_xy
    reference, _ = run_fit(x, y)
    ckpt = tmp_path / "ckpt" / "fit.pt"
    stopped, s1 = run_fit(x, y, ckpt_path=ckpt, stop_after=25)  # checkpoint at 20, steps 21-25 lost
    assert s1["stopped"] and ckpt.is_file()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["step"] == 20 and {"model", "opt", "rng", "torch_rng", "fingerprint"} <= saved.keys()
    torch.manual_seed(999)  # a different global RNG state at restart: the checkpoint's must win
    resumed, s2 = run_fit(x, y, ckpt_path=ckpt)
    assert s2["resumed_from"] == 20 and "stopped" not in s2
    assert_same_weights(reference.state_dict(), resumed.state_dict())
    assert not ckpt.exists() and not list(ckpt.parent.iterdir())  # deleted on success, no temporaries
    assert not torch.equal(saved["model"]["head.weight"], reference.state_dict()["head.weight"])


def test_fit_removes_what_a_run_killed_while_checkpointing_left(tmp_path, digits_xy):
    x, y = digits_xy
    ckpt = tmp_path / "fit.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".fit.pt.tmp-{int(dead.stdout)}-abc"
    left.mkdir()
    (left / "fit.pt").write_bytes(b"half a checkpoint")
    _, s = run_fit(x, y, ckpt_path=ckpt)
    assert "stopped" not in s and not list(tmp_path.iterdir())


def test_fit_without_restoring_rng_would_differ(tmp_path, digits_xy):
    """Guards the test above: a run that only reloads weights and optimiser (fresh RNGs) does not match."""
    x, y = digits_xy
    reference, _ = run_fit(x, y)
    ckpt = tmp_path / "fit.pt"
    run_fit(x, y, ckpt_path=ckpt, stop_after=20)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = new_model()
    model.load_state_dict(saved["model"])
    cfg = FitConfig(**{**CFG.__dict__, "steps": 10})
    fit(model, x, y, cfg, CPU, augment=flip_some)
    assert not torch.equal(model.state_dict()["head.weight"], reference.state_dict()["head.weight"])


def test_fit_ignores_a_checkpoint_of_another_config_or_data(tmp_path, digits_xy, capsys):
    x, y = digits_xy
    ckpt = tmp_path / "fit.pt"
    run_fit(x, y, ckpt_path=ckpt, stop_after=15)
    other = FitConfig(**{**CFG.__dict__, "seed": 4})
    reference, _ = run_fit(x, y, cfg=other)
    model, s = run_fit(x, y, cfg=other, ckpt_path=ckpt)
    assert s["resumed_from"] == 0 and "ignoring checkpoint" in capsys.readouterr().out
    assert_same_weights(reference.state_dict(), model.state_dict())
    assert fingerprint(new_model(), x, y, CFG, CPU, flip_some) != fingerprint(new_model(), x[1:], y[1:], CFG, CPU, flip_some)
    changed_every = FitConfig(**{**CFG.__dict__, "checkpoint_every": 7})  # does not change the result
    assert fingerprint(new_model(), x, y, CFG, CPU, flip_some) == fingerprint(new_model(), x, y, changed_every, CPU, flip_some)


def test_fit_ignores_an_unreadable_checkpoint(tmp_path, digits_xy, capsys):
    x, y = digits_xy
    ckpt = tmp_path / "fit.pt"
    ckpt.write_bytes(b"not a checkpoint")
    reference, _ = run_fit(x, y)
    model, s = run_fit(x, y, ckpt_path=ckpt)
    assert s["resumed_from"] == 0 and "ignoring unreadable checkpoint" in capsys.readouterr().out
    assert_same_weights(reference.state_dict(), model.state_dict())


class Payload:
    """Unpickling this runs code (creates a file): what weights_only=True must refuse to do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_fit_never_unpickles_a_checkpoint(tmp_path, digits_xy, capsys):
    x, y = digits_xy
    ckpt, marker = tmp_path / "fit.pt", tmp_path / "pwned"
    torch.save({"fingerprint": "x", "step": 10, "model": Payload(marker)}, ckpt)
    _, s = run_fit(x, y, ckpt_path=ckpt)
    assert not marker.exists() and s["resumed_from"] == 0
    assert "ignoring unreadable checkpoint" in capsys.readouterr().out


# ---------------------------------------------------------------- GAN training, killed with SIGKILL

GAN_PARAMS = {"z_dim": 16, "g_width": 16, "d_width": 16, "steps": 60, "batch_size": 16,
              "checkpoint_every": 10, "ema_start": 5, "seed": 0}
KILL_AFTER_CHECKPOINT = 20  # kill once a checkpoint of at least this step exists (not the first one)


def gan_project(root: Path) -> Path:
    """A folder with params.yaml, data/prepared/ and data/restored/ (3 shots of digits 5-9), as train_gan expects."""
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"gan": GAN_PARAMS}))
    prepare(DataParams(shots=3, image_size=16), root / "data" / "prepared")
    (root / "data" / "restored").mkdir()  # what the restore stage writes when it is off: byte copies
    for name in ("target_train.npz", "target_test.npz"):
        shutil.copyfile(root / "data" / "prepared" / name, root / "data" / "restored" / name)
    return root


def snapshot_code(dest: Path) -> Path:
    """A copy of stages/ and ganaug/: every run of the test uses the same code (the fingerprint hashes it)."""
    for package in ("stages", "ganaug"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def start_train_gan(project: Path, code: Path, *, forked: bool = True) -> subprocess.Popen:
    """`python -m stages.train_gan` in `project` with the code snapshot: forked from the tests' fork server
    (tests/forkserver.py, about 3 s of CPU less than a fresh process), or a plain process, for the one killed."""
    env = {**tool_env(), "PYTHONPATH": str(code), "GANAUG_DEVICE": "cpu"}
    python, env = (forked_python(), forked_env(env)) if forked else (sys.executable, env)
    return subprocess.Popen([python, "-m", "stages.train_gan"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_files(project: Path) -> list[Path]:
    d = project / "checkpoints" / "train_gan"
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


def checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (OSError, RuntimeError, EOFError):  # replaced or removed while we read it
        return -1


def wait_for_checkpoint(proc: subprocess.Popen, project: Path, min_step: int, timeout: float = 300) -> int:
    """Poll until the running trainer has checkpointed at least `min_step`; return that step. Every 10 ms, but a
    checkpoint is loaded only when its file is new or rewritten (loading each one on every poll took most of a
    core away from the trainer and the rest of the suite)."""
    deadline = time.monotonic() + timeout
    seen: dict[Path, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"train_gan ended before it could be killed:\n{proc.communicate()}"
        for f in checkpoint_files(project):
            try:
                st = f.stat()
            except FileNotFoundError:  # replaced or removed since the listing
                continue
            if seen.get(f) == (st.st_mtime_ns, st.st_size):
                continue
            step = checkpoint_step(f)
            if step >= min_step:
                return step
            if step >= 0:
                seen[f] = (st.st_mtime_ns, st.st_size)
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of step >= {min_step} within {timeout} s")


def gan_tensors(project: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(project / "models" / "gan.pt", map_location="cpu", weights_only=True)
    return {f"{net}.{k}": v for net in ("generator", "generator_ema", "discriminator") for k, v in blob[net].items()}


@pytest.mark.heavy
def test_gan_training_killed_with_sigkill_resumes_bit_identically(tmp_path):
    code = snapshot_code(tmp_path / "code")
    killed = gan_project(tmp_path / "killed")
    straight = gan_project(tmp_path / "straight")
    uninterrupted = start_train_gan(straight, code)  # runs alongside the kill/resume sequence

    proc = start_train_gan(killed, code, forked=False)  # the process killed is a plain one, as a user's is
    step = wait_for_checkpoint(proc, killed, KILL_AFTER_CHECKPOINT)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert KILL_AFTER_CHECKPOINT <= step < GAN_PARAMS["steps"]
    assert not (killed / "models" / "gan.pt").exists()  # a killed run leaves no model
    [ckpt] = checkpoint_files(killed)
    resume_step = checkpoint_step(ckpt)
    assert KILL_AFTER_CHECKPOINT <= resume_step < GAN_PARAMS["steps"]

    restarted = start_train_gan(killed, code)
    out, err = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, err
    assert f"resumed at step {resume_step}" in out, out
    assert checkpoint_files(killed) == []  # deleted on success
    left = sorted((killed / "checkpoints" / "train_gan").iterdir())  # only what the killed writer may have left
    assert left == stale_temporaries(ckpt), left

    out, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err
    assert "resumed" not in out
    a, b = gan_tensors(straight), gan_tensors(killed)
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different}"
    assert np.array_equal(np.load(straight / "data/prepared/target_train.npz")["x"],
                          np.load(killed / "data/prepared/target_train.npz")["x"])
