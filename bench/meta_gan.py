"""Meta-learned GAN start vs scratch vs source on Omniglot (issue #12): KID against target adaptation steps.

Source: `omniglot_source.npz` (155 classes of 4 alphabets); targets: 5-way tasks from `omniglot_target.npz`
(87 classes of 4 other alphabets), `--shots` images per class, the class's other images as the KID reference.
Three starts adapted to the same target tasks with the same GAN params:
- scratch: a fresh GAN, the default lr;
- source: the GAN trained on all source classes (`gan.source_steps`), class embeddings fresh, the default lr;
- meta: Reptile over 5-way source tasks (`meta:` defaults), adapted with the lr and decay its meta-validation chose.
KID (classifier features: the classifier pretrained on the source classes) of the EMA generator's samples, at
every step count of the curve, mean over target tasks. Meta-training's wall time is reported next to it.

    GANAUG_SHARED_DATA=../shared/data .venv/bin/python -m bench.meta_gan --tasks 3 --shots 5
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import DOC, ROOT, command_line, fmt_ci, machine, markdown_table, mean_ci, publish, shared_file


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=3, help="target tasks (seeds)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200, 400], help="points of the curve")
    ap.add_argument("--set", action="append", default=[], help="section.key=value over params.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--raw", type=Path, default=ROOT / "bench/results/meta_gan.json")
    args = ap.parse_args(argv)
    os.environ["GANAUG_THREADS"] = str(args.threads)
    import torch

    from bench.common import deep_update, parse_overrides
    from ganaug.config.params import parse_params
    from ganaug.io.data import LoadOptions, load_dataset, to_float
    from ganaug.judge.feature_metrics import kid
    from ganaug.nets.gan import GanConfig, sample
    from ganaug.train.fit import embed
    from ganaug.train.gan import train_gan
    from ganaug.train.meta_gan import adapt, draw_task, inner_params, meta_train, meta_validate
    from ganaug.train.runtime import configure_threads
    from stages.pretrain import pretrain

    cpu = torch.device("cpu")
    configure_threads(cpu)
    raw = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), parse_overrides(args.set))
    raw = deep_update(raw, {"meta": {"ways": args.ways, "shots": args.shots}})
    params = parse_params(raw)
    p, m = params.gan, params.meta
    opts = LoadOptions(16, 1)
    source = load_dataset(shared_file("omniglot_source.npz"), opts)["train"]
    target = load_dataset(shared_file("omniglot_target.npz"), opts)["train"]
    t0 = time.perf_counter()
    clf, _, _ = pretrain(source, params.classifier, cpu)
    seconds = {"classifier": round(time.perf_counter() - t0, 1)}

    def features(x: torch.Tensor) -> np.ndarray:
        return embed(clf, x, 512, cpu).numpy()

    t0 = time.perf_counter()
    src_p = p.model_copy(update={"steps": p.source_steps, "checkpoint_every": 10**9})
    with tempfile.TemporaryDirectory() as work:
        train_gan(source, src_p, Path(work) / "gan_source.pt", Path(work) / "ckpt", cpu)
        with_src = torch.load(Path(work) / "gan_source.pt", weights_only=True)
    seconds["source_gan"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    start = meta_train(source, p, m, args.ways, args.shots, cpu)
    seconds["meta_train"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    val = meta_validate(start, source, start.pop("val_classes"), p, m, args.ways, args.shots, features, cpu)
    seconds["meta_validate"] = round(time.perf_counter() - t0, 1)
    chosen = val["chosen"]
    cfg = GanConfig(**start["config"])
    starts = {"scratch": (None, p.lr_g, 0.0), "source": (with_src, p.lr_g, 0.0),
              "meta": (start, chosen["lr"], chosen["lr_gamma"])}
    curves = {name: {s: [] for s in args.steps} for name in starts}
    all_classes = np.arange(len(target.class_names))
    for t in range(args.tasks):
        task = draw_task(target, all_classes, args.ways, args.shots, np.random.default_rng([1234, t]))
        ref = features(to_float(task.rest.x))
        labels = torch.as_tensor(task.rest.y, dtype=torch.long)
        for name, (init, lr, gamma) in starts.items():
            def measure(trainer, name=name) -> None:
                if trainer.step in curves[name]:
                    fake = sample(trainer.g_ema, labels, p.z_dim, torch.Generator().manual_seed(t), cpu, 256)
                    curves[name][trainer.step].append(kid(features(fake), ref, subsets=20, seed=t)["mean"])
            q = inner_params(p, max(args.steps), lr, gamma, seed=t)
            adapt(init, task.shots, cfg, q, cpu, measure)
        print(f"meta bench: task {t}: " + "; ".join(f"{n} KID@{max(args.steps)} {curves[n][max(args.steps)][-1]:.4f}"
                                                   for n in starts), flush=True)
    rows = [[f"{s}"] + [fmt_ci(*mean_ci(curves[n][s]), digits=4) for n in starts] for s in args.steps]
    body = "\n".join([
        "## Meta-learned GAN start on Omniglot (issue #12)", "",
        f"Command: `{command_line()}`; {machine()}; {args.threads} thread(s).", "",
        f"{args.ways}-way {args.shots}-shot target tasks from `omniglot_target.npz` (alphabets never seen in the "
        f"source), {args.tasks} tasks; KID (lower is better; the source classifier's features) of the EMA "
        f"generator against each class's other images, mean ± 95% t-interval over tasks. scratch and source adapt "
        f"at the default lr {p.lr_g:g}; meta at its meta-validated lr {chosen['lr']:g}, decay {chosen['lr_gamma']:g} "
        f"(meta-validation's best step count: {chosen['steps']}).", "",
        markdown_table(["target steps", "scratch", "source", "meta"], rows), "",
        f"Cost, wall seconds: source classifier {seconds['classifier']}, source GAN ({p.source_steps} steps) "
        f"{seconds['source_gan']}, meta-training ({m.episodes} episodes x {m.inner_steps} steps) "
        f"{seconds['meta_train']}, meta-validation {seconds['meta_validate']}."])
    publish(args.out, "meta_gan", body, args.raw, {"curves": {n: {str(s): v for s, v in c.items()} for n, c in curves.items()},
                                                   "chosen": chosen, "grid": val["grid"], "seconds": seconds})


if __name__ == "__main__":
    main()
