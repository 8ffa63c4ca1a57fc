"""Classification metrics, the bootstrap interval of a difference, and confusion-matrix pictures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from ganaug.io.pictures import pyplot, tick_label


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support."""
    labels = list(range(len(class_names)))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]), "support": int(support[k])}
            for k, name in enumerate(class_names)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _macro_f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 for a stack of confusion matrices (R, K, K)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = cm.sum(1) + cm.sum(2)  # (R, K): true count + predicted count
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1.mean(1)


def _confusion_stack(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """One confusion matrix per row of (R, N) labels and predictions: (R, K, K) counts. One `np.bincount` over
    the flat (row, actual, predicted) index, the counts `np.add.at` gives at a fraction of its time."""
    rounds = y.shape[0]
    flat = (np.arange(rounds)[:, None] * n_classes + y) * n_classes + pred  # (R, N)
    return np.bincount(flat.ravel(), minlength=rounds * n_classes * n_classes).reshape(rounds, n_classes, n_classes)


def bootstrap_delta(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int,
                    rounds: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap over test images of (b - a) for accuracy and macro-F1: mean and 95% interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(rounds, len(y)))  # (R, N)
    actual, out = y[idx], {}
    for name, pred in (("a", pred_a), ("b", pred_b)):
        cm = _confusion_stack(actual, pred[idx], n_classes)  # (R, K, K)
        accuracy = np.trace(cm, axis1=1, axis2=2) / len(y)  # (R,)
        out[name] = {"accuracy": accuracy, "macro_f1": _macro_f1_from_confusion(cm)}
    result = {}
    for metric in ("accuracy", "macro_f1"):
        d = out["b"][metric] - out["a"][metric]
        result[metric] = {"ci95_low": float(np.percentile(d, 2.5)), "ci95_high": float(np.percentile(d, 97.5))}
    return result


def save_confusion_png(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    plt = pyplot()

    cm = np.asarray(cm)
    size = 1.2 + 0.45 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues")
    labels = [tick_label(n) for n in class_names]
    ax.set_xticks(range(len(class_names)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
