"""The GAN training step on a GPU: ganaug's step against the reference loop, at several batch sizes and precisions.

The same comparison as `bench/throughput.py`'s GAN table (the reference
conditional DCGAN of that file, scaled to ganaug's parameter count), run on a
CUDA device: `GanTrainer.train_step` with the default `gan:` params (batch size
and precision varied) against the reference loop with its data on the device
(`lean`: no DataLoader, no `.item()`). Alternating timed rounds in one process,
the device synchronised at the end of each; median images per second.

    .venv/bin/python -m bench.gpu_step                      # needs CUDA; about a minute
    .venv/bin/python -m bench.gpu_step --device cpu --batch-sizes 8 --steps 2   # a smoke run anywhere
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from bench.common import DOC, ROOT, command_line, deep_update, machine, markdown_table, parse_overrides, publish
from bench.throughput import ReferenceLoop, alternate, ganaug_runner, ganaug_trainer, n_params, ref_runner
from ganaug.config.params import Params, parse_params
from ganaug.io.data import ImageSet, load_prepared
from stages.prepare import prepare


def synced(device: torch.device, fn: Callable[[int], None]) -> Callable[[int], None]:
    """`fn`, then wait for the device, so that a timed round holds all of its work."""
    def run(n: int) -> None:
        fn(n)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def measure(ds: ImageSet, p: Params, device: torch.device, batch_size: int, precision: str, steps: int,
            rounds: int) -> dict:
    """ganaug's and the reference's images/s at one batch size and precision, and their ratio."""
    gp = p.gan.model_copy(update={"batch_size": batch_size, "precision": precision})
    trainer = ganaug_trainer(ds, p.model_copy(update={"gan": gp}), device=device)
    target = n_params(trainer.g_net, trainer.d_net)
    ref = ReferenceLoop(ds, trainer.g_net.cfg, target, batch_size, lean=True, device=device)
    rates = alternate({"ganaug": synced(device, ganaug_runner(trainer)), "reference": synced(device, ref_runner(ref))},
                      steps, batch_size, rounds, warmup=max(1, steps // 5))
    return {"batch_size": batch_size, "precision": precision, "params_ganaug": target,
            "params_reference": n_params(ref.g_net, ref.d_net), **rates, "ratio": rates["ganaug"] / rates["reference"]}


def render(rows: list[dict], p: Params, device: torch.device, steps: int, rounds: int, command: str) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return "\n".join([
        "## The GAN step on a GPU (`bench/gpu_step.py`)", "",
        f"- Command: `{command}`",
        f"- Device: {name}; machine: {machine()}",
        f"- `gan.arch: {p.gan.arch}` (widths {p.gan.g_width}/{p.gan.d_width}), image size {p.data.image_size}; "
        f"median of {rounds} alternating rounds of {steps} steps; reference: bench/throughput.py's conditional "
        f"DCGAN at the same parameter count, data on the device", "",
        markdown_table(["batch", "precision", "ganaug images/s", "reference images/s", "ganaug / reference"],
                       [[r["batch_size"], r["precision"], f"{r['ganaug']:.0f}", f"{r['reference']:.0f}",
                         f"{r['ratio']:.2f}x"] for r in rows]),
    ]) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=100, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override params.yaml, e.g. --set gan.arch=dcgan")
    ap.add_argument("--out", type=Path, default=DOC, help="markdown file whose `gpu_step` section is (re)written")
    ap.add_argument("--raw", type=Path, help="write the numbers as JSON here too")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device (use --device cpu for a smoke run)")
    p = parse_params(deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), parse_overrides(args.overrides)))
    with tempfile.TemporaryDirectory(prefix="ganaug-gpu-step-") as work:
        prepare(p.data, Path(work) / "prepared")
        ds = load_prepared(Path(work) / "prepared/target_train.npz")
    rows = [measure(ds, p, device, b, prec, args.steps, args.rounds) for b in args.batch_sizes for prec in args.precisions]
    publish(args.out, "gpu_step", render(rows, p, device, args.steps, args.rounds, command_line()), args.raw,
            {"device": str(device), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
