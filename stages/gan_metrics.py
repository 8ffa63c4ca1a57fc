"""Stage `gan_metrics`: how good is the synthetic set? -> `metrics/gan.json`.

- CAS (classification accuracy score, Ravuri & Vinyals 2019): the pretrained
  classifier fine-tuned (ganaug.train.finetune.finetune, same `finetune:` budget and
  seed) on the synthetic images only, tested on the real target test set, next
  to the same fine-tuning on the real shots. A perfect generator scores the
  real-trained accuracy or better (it can give more images than the shots).
- FID, KID (the one to trust under ~2,048 samples) and k-NN precision / recall
  in the pretrained classifier's penultimate-layer feature space
  (`models/classifier.pt`, not Inception), synthetic vs the real target test set,
  overall and per class (KID, precision, recall) where both sides have more than
  `K_NN` samples. Per-class FID is left out: with fewer samples than feature
  dimensions its covariance is singular and the number is mostly bias.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ganaug.config.errors import exit_on_user_error
from ganaug.config.params import EvalParams, FinetuneParams, load_params
from ganaug.io.atomic import write_json
from ganaug.io.data import ImageSet, load_prepared, load_synthetic, to_float
from ganaug.judge.feature_metrics import fid, kid, precision_recall
from ganaug.judge.metrics import classification_metrics
from ganaug.nets.classifier import load_classifier
from ganaug.train.finetune import finetune
from ganaug.train.fit import embed, predict
from ganaug.train.runtime import pick_device

K_NN = 3
KID_SUBSETS = 100


def features(classifier_path: Path, ds: ImageSet, batch_size: int, device: torch.device) -> np.ndarray:
    """Penultimate-layer features (N, F) of the pretrained classifier."""
    model, _, _ = load_classifier(classifier_path)
    return embed(model, to_float(ds.x), batch_size, device).numpy()


def distribution_metrics(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> Optional[dict]:
    """FID, KID and precision/recall of fake vs real features; None when a side has <= K_NN samples."""
    if min(len(real), len(fake)) <= K_NN:
        return None
    k = kid(real, fake, subsets=KID_SUBSETS, seed=seed)
    pr = precision_recall(real, fake, k=K_NN)
    return {"fid": fid(real, fake), "kid": k["mean"], "kid_std": k["std"], "kid_subset_size": k["subset_size"],
            "precision": pr["precision"], "recall": pr["recall"], "n_real": len(real), "n_fake": len(fake)}


def per_class_metrics(real: np.ndarray, real_y: np.ndarray, fake: np.ndarray, fake_y: np.ndarray,
                      class_names: list[str], seed: int = 0) -> dict[str, Optional[dict]]:
    """KID and precision/recall per class (None where a side has too few samples)."""
    out = {}
    for k, name in enumerate(class_names):
        m = distribution_metrics(real[real_y == k], fake[fake_y == k], seed)
        out[name] = None if m is None else {key: m[key] for key in ("kid", "precision", "recall", "n_real", "n_fake")}
    return out


def accuracy_of(model: torch.nn.Module, test: ImageSet, batch_size: int, device: torch.device) -> dict:
    """Accuracy, macro-F1 and per-class recall of `model` on `test`."""
    pred = predict(model, to_float(test.x), batch_size, device).argmax(1).numpy()
    m = classification_metrics(test.y, pred, test.class_names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "per_class_recall": {k: v["recall"] for k, v in m["per_class"].items()}}


def cas(classifier_path: Path, synthetic: ImageSet, real: ImageSet, test: ImageSet, fp: FinetuneParams,
        batch_size: int, device: torch.device) -> dict:
    """Test-set scores of the classifier fine-tuned on synthetic only and on the real shots, same budget."""
    out = {}
    for name, train in (("synthetic", synthetic), ("real", real)):
        model, _, _ = finetune(classifier_path, train, fp, device)
        out[name] = {**accuracy_of(model, test, batch_size, device), "train_images": len(train)}
    out["cas_minus_real_accuracy"] = out["synthetic"]["accuracy"] - out["real"]["accuracy"]
    return out


def gan_metrics(classifier_path: Path, synthetic_dir: Path, train: ImageSet, test: ImageSet,
                fp: FinetuneParams, ep: EvalParams, device: torch.device) -> dict:
    """Everything `metrics/gan.json` holds."""
    syn = load_synthetic(synthetic_dir, train)
    if syn is None:
        return {"n_synthetic": 0, "cas": None, "features": None, "per_class": None}
    f_test = features(classifier_path, test, ep.batch_size, device)
    f_syn = features(classifier_path, syn, ep.batch_size, device)
    return {
        "n_synthetic": len(syn), "n_test": len(test),
        "feature_space": "pretrained classifier penultimate layer (models/classifier.pt)",
        "cas": cas(classifier_path, syn, train, test, fp, ep.batch_size, device),
        "features": distribution_metrics(f_test, f_syn, fp.seed),
        "per_class": per_class_metrics(f_test, test.y, f_syn, syn.y, test.class_names, fp.seed),
    }


@exit_on_user_error
def main() -> None:
    params = load_params("params.yaml")
    train = load_prepared("data/restored/target_train.npz")
    test = load_prepared("data/restored/target_test.npz")
    out = gan_metrics(Path("models/classifier.pt"), Path("data/synthetic"), train, test,
                      params.finetune, params.eval, pick_device())
    write_json("metrics/gan.json", out)
    if out["cas"] is None:
        print("gan_metrics: no synthetic images (synth.per_class: 0) -> metrics/gan.json")
        return
    c, f = out["cas"], out["features"]
    print(f"gan_metrics: CAS {c['synthetic']['accuracy']:.3f} (real-trained {c['real']['accuracy']:.3f}), "
          f"KID {f['kid']:.4f}, FID {f['fid']:.2f}, precision {f['precision']:.3f}, recall {f['recall']:.3f} "
          f"-> metrics/gan.json")


if __name__ == "__main__":
    main()
