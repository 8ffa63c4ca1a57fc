"""Stage `finetune` (foreach variant): transfer the pretrained classifier to the target classes.

The backbone starts from `models/classifier.pt`, the head is new (one output per
target class), and every variant gets the same optimiser-step budget and seed,
so the variants differ only in their training data and augmentation:

| variant | training data | `--augment` |
|---|---|---|
| `baseline` | real shots | `none` |
| `classical` | real shots | `finetune.augment` (default `trivialaugment`) |
| `augmented` | real + synthetic | `none` |
| `augmented_classical` | real + synthetic | `finetune.augment` |

`--augment` takes a policy name of `stages/classical_aug.py` (random crop with
padding plus torchvision's TrivialAugmentWide or RandAugment, per image).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stages.atomic import atomic_file
from stages.classical_aug import POLICIES, build_augment, check_policy
from stages.classifier_model import load_classifier, save_classifier
from stages.data import ImageSet, load_training_set, to_float
from stages.errors import exit_on_user_error
from stages.fit import FitConfig, fit
from stages.params import FinetuneParams, load_params
from stages.runtime import pick_device, seed_everything


def finetune(classifier_path: Path, train: ImageSet, p: FinetuneParams, device: torch.device,
             live_dir: str | None = None, ckpt_path: Path | None = None, augment: str = "none"):
    """Fine-tune the pretrained classifier on `train` with policy `augment`; return (model, config, summary).

    `p.augment` is not read here: it is the policy dvc.yaml passes to the *_classical variants.
    """
    aug = build_augment(augment)
    seed_everything(p.seed)
    model, cfg, _ = load_classifier(classifier_path)
    model.reset_head(len(train.class_names))
    cfg.n_classes = len(train.class_names)
    fit_cfg = FitConfig(p.steps, p.batch_size, p.lr, p.weight_decay, p.backbone_lr_mult, p.seed,
                        checkpoint_every=p.checkpoint_every)
    summary = fit(model, to_float(train.x), torch.tensor(train.y), fit_cfg, device, live_dir,
                  augment=aug, desc="finetune", ckpt_path=ckpt_path)
    summary.update(train_images=len(train), augment=augment)
    return model.cpu(), cfg, summary


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--train", required=True, help="a prepared .npz or an ImageFolder tree with manifest.parquet")
    ap.add_argument("--augment", default="none", help=f"classical augmentation policy: {' | '.join(POLICIES)}")
    args = ap.parse_args(argv)
    p = load_params().finetune
    check_policy(args.augment, "finetune --augment")
    clf_path = Path("models/classifier.pt")
    _, clf_cfg, _ = load_classifier(clf_path)
    train = load_training_set(Path(args.train), clf_cfg.image_size, clf_cfg.channels)
    model, cfg, summary = finetune(clf_path, train, p, pick_device(), live_dir=f"dvclive/finetune/{args.variant}",
                                   ckpt_path=Path(f"checkpoints/finetune/{args.variant}.pt"), augment=args.augment)
    out = Path(f"models/finetune/{args.variant}.pt")
    with atomic_file(out) as tmp:  # no timings in the file: same params, same bytes
        save_classifier(tmp, model, cfg, train.class_names,
                        {"variant": args.variant, "train_images": len(train), "augment": args.augment})
    print(f"finetune[{args.variant}]: {len(train)} training images, augment {args.augment}, "
          f"{summary['steps']} steps in {summary['seconds']}s -> {out}")


if __name__ == "__main__":
    main()
