"""Meta-learned GAN start vs scratch vs source on Omniglot (issue #12): KID against target adaptation steps.

Source: `omniglot_source.npz` (155 classes of 4 alphabets); targets: 5-way tasks from `omniglot_target.npz`
(87 classes of 4 other alphabets), `--shots` images per class, the class's other images as the KID reference.
Three starts adapted to the same target tasks with the same GAN params:
- scratch: a fresh GAN, the default lr;
- source: the GAN trained on all source classes (`gan.source_steps`), class embeddings fresh, the default lr;
- meta: Reptile over 5-way source tasks (`meta:` defaults), adapted with the lr and decay its meta-validation chose.
At every step count of the curve, over target tasks: KID (the features of the classifier pretrained on the source
classes) of the EMA generator's samples against the class's other images, and CAS (that classifier fine-tuned on
`--cas-per-class` samples per class only, accuracy on the class's other images; the real shots' accuracy beside
it). Meta-training's wall time is reported next to it. Pictures: the curves, and task 0's samples of the three
starts side by side from the same noise.

    GANAUG_SHARED_DATA=../shared/data .venv/bin/python -m bench.meta_gan --tasks 5 --shots 5 --out docs/gan_transfer.md
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
    ap.add_argument("--tasks", type=int, default=5, help="target tasks (seeds)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200, 400], help="points of the curve")
    ap.add_argument("--set", action="append", default=[], help="section.key=value over params.yaml")
    ap.add_argument("--cas-per-class", type=int, default=20, help="synthetic images per class for CAS")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pictures", type=Path, default=ROOT / "docs/img", help="folder for the curve and sample PNGs")
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--raw", type=Path, default=ROOT / "bench/results/meta_gan.json")
    args = ap.parse_args(argv)
    os.environ["GANAUG_THREADS"] = str(args.threads)
    import torch

    from bench.common import deep_update, parse_overrides
    from ganaug.config.params import parse_params
    from ganaug.io.data import ImageSet, LoadOptions, load_dataset, to_float, to_uint8
    from ganaug.io.pictures import grid_images
    from ganaug.judge.feature_metrics import kid
    from ganaug.nets.classifier import save_classifier
    from ganaug.nets.gan import GanConfig, sample
    from ganaug.tools.compare_samples import plot_panels
    from ganaug.train.finetune import finetune
    from ganaug.train.fit import embed
    from ganaug.train.gan import train_gan
    from ganaug.train.meta_gan import adapt, draw_task, inner_config, meta_train, meta_validate
    from ganaug.train.runtime import configure_threads
    from stages.gan_metrics import accuracy_of
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
    clf, clf_cfg, _ = pretrain(source, params.classifier, cpu)
    seconds = {"classifier": round(time.perf_counter() - t0, 1)}
    scratch_dir = tempfile.TemporaryDirectory()
    clf_path = Path(scratch_dir.name) / "classifier.pt"
    save_classifier(clf_path, clf, clf_cfg, source.class_names, {})

    def accuracy(train: ImageSet, test: ImageSet) -> float:
        """CAS-style score: the source classifier fine-tuned on `train` only, accuracy on `test`."""
        model, _, _ = finetune(clf_path, train, params.finetune, cpu)
        return accuracy_of(model, test, 512, cpu)["accuracy"]

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
    cas = {name: {s: [] for s in args.steps} for name in starts}
    real_acc, mosaics = [], {}
    all_classes = np.arange(len(target.class_names))
    for t in range(args.tasks):
        task = draw_task(target, all_classes, args.ways, args.shots, np.random.default_rng([1234, t]))
        ref = features(to_float(task.rest.x))
        labels = torch.as_tensor(task.rest.y, dtype=torch.long)
        cas_labels = torch.arange(args.ways).repeat_interleave(args.cas_per_class)
        real_acc.append(accuracy(task.shots, task.rest))
        for name, (init, lr, gamma) in starts.items():
            def measure(trainer, name=name) -> None:
                if trainer.step not in curves[name]:
                    return
                fake = sample(trainer.g_ema, labels, p.z_dim, torch.Generator().manual_seed(t), cpu, 256)
                curves[name][trainer.step].append(kid(features(fake), ref, subsets=20, seed=t)["mean"])
                syn = sample(trainer.g_ema, cas_labels, p.z_dim, torch.Generator().manual_seed(10_000 + t), cpu, 256)
                syn_set = ImageSet(to_uint8(syn), cas_labels.numpy(), list(task.shots.class_names))
                cas[name][trainer.step].append(accuracy(syn_set, task.rest))
            q = inner_config(p, max(args.steps), lr, gamma, seed=t)
            trainer = adapt(init, task.shots, cfg, q, cpu, measure)
            if t == 0:
                grid_labels = torch.arange(args.ways).repeat_interleave(8)
                x = to_uint8(sample(trainer.g_ema, grid_labels, p.z_dim, torch.Generator().manual_seed(0), cpu, 256))
                mosaics[name] = grid_images(x, grid_labels.numpy(), args.ways, 8)
        last = max(args.steps)
        print(f"meta bench: task {t}: real-shot accuracy {real_acc[-1]:.3f}; " + "; ".join(
            f"{n} KID@{last} {curves[n][last][-1]:.4f} CAS {cas[n][last][-1]:.3f}" for n in starts), flush=True)
    scratch_dir.cleanup()
    args.pictures.mkdir(parents=True, exist_ok=True)
    curve_png, grid_png = args.pictures / "meta_gan_curves.png", args.pictures / "meta_gan_samples.png"
    plot_curves(curves, cas, mean_ci(real_acc)[0], curve_png)
    plot_panels(mosaics, [f"class {k}" for k in range(args.ways)],
                f"target task 0 after {max(args.steps)} steps, same noise", grid_png)
    rows = [[f"{s}"] + [fmt_ci(*mean_ci(curves[n][s]), digits=4) for n in starts]
            + [fmt_ci(*mean_ci(cas[n][s])) for n in starts] for s in args.steps]
    body = "\n".join([
        "## Meta-learned GAN start on Omniglot (issue #12)", "",
        f"Command: `{command_line()}`; {machine()}; {args.threads} thread(s).", "",
        f"{args.ways}-way {args.shots}-shot target tasks from `omniglot_target.npz` (alphabets never seen in the "
        f"source), {args.tasks} tasks; KID (lower is better; the source classifier's features) of the EMA "
        f"generator against each class's other images, and CAS (the source classifier fine-tuned on "
        f"{args.cas_per_class} samples per class only, accuracy on those images; the real shots give "
        f"{fmt_ci(*mean_ci(real_acc))}), mean ± 95% t-interval over tasks. scratch and source adapt "
        f"at the default lr {p.lr_g:g}; meta at its meta-validated lr {chosen['lr']:g}, decay {chosen['lr_gamma']:g} "
        f"(meta-validation's best step count: {chosen['steps']}).", "",
        markdown_table(["target steps", "KID scratch", "KID source", "KID meta", "CAS scratch", "CAS source",
                        "CAS meta"], rows), "",
        f"![KID and CAS against target steps]({os.path.relpath(curve_png, args.out.parent)})", "",
        f"![the three starts, same noise]({os.path.relpath(grid_png, args.out.parent)})", "",
        f"Cost, wall seconds: source classifier {seconds['classifier']}, source GAN ({p.source_steps} steps) "
        f"{seconds['source_gan']}, meta-training ({m.episodes} episodes x {m.inner_steps} steps) "
        f"{seconds['meta_train']}, meta-validation {seconds['meta_validate']}."])
    publish(args.out, "meta_gan", body, args.raw, {
        "kid": {n: {str(s): v for s, v in c.items()} for n, c in curves.items()},
        "cas": {n: {str(s): v for s, v in c.items()} for n, c in cas.items()}, "real_shot_accuracy": real_acc,
        "chosen": chosen, "grid": val["grid"], "seconds": seconds})


def plot_curves(kid: dict, cas: dict, real_acc: float, path: Path) -> None:
    """KID and CAS (mean over tasks, 95% band) against target steps, one line per start."""
    from ganaug.io.atomic import atomic_file
    from ganaug.io.pictures import pyplot

    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for ax, data, title in ((axes[0], kid, "KID (lower is better)"), (axes[1], cas, "CAS accuracy (higher is better)")):
        for name, by_step in data.items():
            steps = sorted(by_step)
            m = np.array([mean_ci(by_step[s])[0] for s in steps])
            h = np.array([mean_ci(by_step[s])[1] or 0.0 for s in steps])
            ax.plot(steps, m, marker="o", label=name)
            ax.fill_between(steps, m - h, m + h, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])  # plain labels: pictures.pyplot() turns mathtext off
        ax.minorticks_off()
        ax.set_xlabel("target adaptation steps")
        ax.set_title(title, fontsize=10)
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    axes[1].axhline(real_acc, color="gray", linestyle="--", label="real shots")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
