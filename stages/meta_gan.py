"""Stage `meta_gan`: with `gan.init: meta`, the GAN's start meta-learned across source tasks -> `models/gan_meta.pt`.

Reptile over few-shot tasks drawn from the source classes, shaped like the target
task (`meta.ways` classes, `meta.shots` images each; by default the target's),
then meta-validation on source classes held out from meta-training picks the
adaptation learning rate, its decay and the number of target steps
(`ganaug/train/meta_gan.py`); `train_gan` adapts with what was chosen.
`metrics/meta.json` records the choice and the whole validation grid. With any
other `gan.init` the file is a placeholder, written at once.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import Params, load_params
from ganaug.io.atomic import atomic_file, write_json
from ganaug.io.data import ImageSet, load_prepared
from ganaug.nets.classifier import load_classifier
from ganaug.train.fit import embed
from ganaug.train.meta_gan import episode_shape, meta_train, meta_validate
from ganaug.train.runtime import pick_device

OUT = Path("models/gan_meta.pt")


def meta_gan(source: ImageSet, n_target_classes: int, params: Params, classifier: Path, device: torch.device,
             ckpt_dir: Path) -> dict:
    """The meta-learned start with its chosen adaptation (gan.init meta), or the placeholder."""
    p, m = params.gan, params.meta
    if p.init != "meta":
        return {"placeholder": f"gan.init is {p.init!r}: no meta-learned start was needed"}
    ways, shots = episode_shape(params.data, m, len(source.class_names), n_target_classes)
    start = meta_train(source, p, m, ways, shots, device, ckpt_dir / "meta_gan.pt")
    model, _, _ = load_classifier(classifier)

    def features(x: torch.Tensor) -> np.ndarray:
        return embed(model, x, 512, device).numpy()

    val = meta_validate(start, source, start.pop("val_classes"), p, m, ways, shots, features, device)
    return {**start, **val}


@exit_on_user_error
def main() -> None:
    params = load_params()
    source = load_prepared("data/prepared/source.npz")
    n_target = len(json.loads(Path("data/prepared/classes.json").read_text())["target"])
    blob = meta_gan(source, n_target, params, Path("models/classifier.pt"), pick_device(), Path("checkpoints/meta_gan"))
    with atomic_file(OUT) as tmp:
        torch.save(blob, tmp)
    write_json("metrics/meta.json", {k: blob[k] for k in ("chosen", "grid", "summary") if k in blob}
               or {"placeholder": blob["placeholder"]})
    if "placeholder" in blob:
        print(f"meta_gan: {blob['placeholder']} -> placeholder {OUT}")
        return
    c, s = blob["chosen"], blob["summary"]
    print(f"meta_gan: {s['episodes']} {s['ways']}-way {s['shots']}-shot episodes over {s['train_classes']} source "
          f"classes in {s['seconds']} s; "
          f"meta-validation chose lr {c['lr']:g}, decay {c['lr_gamma']:g}, {c['steps']} target steps "
          f"(KID {c['kid']:.4f}) -> {OUT}")


if __name__ == "__main__":
    main()
