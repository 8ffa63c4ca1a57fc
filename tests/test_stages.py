"""Each stage's core function on tiny real data (digits, or images written at test time)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from ganaug.config.errors import UserError
from ganaug.config.params import ClassifierParams, DataParams, EvalParams, FinetuneParams, PublishParams
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, load_prepared, load_training_set
from ganaug.io.imagefolder import PUBLISHED_COLUMNS, write_pngs
from ganaug.io.stream_labels import read_stream_labels, stream_frame, write_stream_labels
from ganaug.judge.hard_view import hard_view
from ganaug.nets.classifier import ClassifierConfig, build_classifier, imagenet_weights_path, load_classifier, save_classifier
from ganaug.train.finetune import finetune
from stages.concat import concat
from ganaug.judge.evaluation import compare, evaluate, write_outputs
from stages.prepare import prepare
from stages.pretrain import pretrain

CPU = torch.device("cpu")


def _write_folder_dataset(root, n_classes=10, per_class=6, size=28):
    """An ImageFolder tree with train/ and test/ of 28x28 grayscale PNGs made from digits."""
    digits = load_digits_set(LoadOptions(size, 1))
    for split, offset in (("train", 0), ("test", per_class)):
        for k in range(n_classes):
            idx = np.flatnonzero(digits.y == k)[offset : offset + per_class]
            (root / split / f"c{k}").mkdir(parents=True)
            for i in idx:
                Image.fromarray(digits.x[i, 0]).save(root / split / f"c{k}" / f"{i}.png")
    return root


def test_prepare_novel_classes_keeps_source_and_target_apart(tmp_path):
    p = DataParams(shots=5, source_classes=[0, 1, 2], target_classes=[7, 8, 9])
    m = prepare(p, tmp_path / "prepared")
    train, test, src = (load_prepared(tmp_path / "prepared" / f) for f in ("target_train.npz", "target_test.npz", "source.npz"))
    assert train.class_names == ["7", "8", "9"] and src.class_names == ["0", "1", "2"]
    assert train.counts() == {"7": 5, "8": 5, "9": 5}
    assert train.x.shape[1:] == (1, 16, 16) and train.x.dtype == np.uint8
    digits_y = load_digits_set(LoadOptions(16, 1)).y
    assert len(test) == sum((digits_y == k).sum() for k in (7, 8, 9)) - 15
    assert len(src) == sum((digits_y == k).sum() for k in (0, 1, 2))
    assert m["scenario"] == "same dataset"


def test_prepare_same_classes_excludes_target_images_from_source(tmp_path):
    """Plain low-data augmentation: same dataset and classes; the source keeps only unused images."""
    digits = load_digits_set(LoadOptions(8, 1))
    np.savez(tmp_path / "train.npz", x=digits.x[:1500, 0], y=digits.y[:1500])
    np.savez(tmp_path / "test.npz", x=digits.x[1500:, 0], y=digits.y[1500:])
    p = DataParams(source=str(tmp_path / "train.npz"), target=str(tmp_path / "train.npz"),
                   target_test=str(tmp_path / "test.npz"), source_classes=None, target_classes=None, shots=4)
    prepare(p, tmp_path / "prepared")
    train, test, src = (load_prepared(tmp_path / "prepared" / f) for f in ("target_train.npz", "target_test.npz", "source.npz"))
    assert len(train) == 40 and len(test) == 297 and len(src) == 1500 - 40
    as_bytes = {x.tobytes() for x in src.x}
    assert sum(x.tobytes() in as_bytes for x in train.x) <= 2  # digits has a few duplicate images; shots are not reused


def test_prepare_same_classes_without_test_split_says_why_source_is_empty(tmp_path):
    from ganaug.config.errors import DataError

    with pytest.raises(DataError, match="source set is empty"):
        prepare(DataParams(shots=4, source_classes=None, target_classes=None), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_prepare_is_seeded(tmp_path):
    a = prepare(DataParams(shots=3, seed=1), tmp_path / "a")
    b = prepare(DataParams(shots=3, seed=1), tmp_path / "b")
    c = prepare(DataParams(shots=3, seed=2), tmp_path / "c")
    xa, xb, xc = (load_prepared(tmp_path / d / "target_train.npz").x for d in "abc")
    assert a == b and np.array_equal(xa, xb) and not np.array_equal(xa, xc)
    classes = [(tmp_path / d / "classes.json").read_bytes() for d in "ac"]  # meta_gan's dependency
    assert classes[0] == classes[1] and json.loads(classes[0]) == c["classes"]  # the same for another shot sample


def test_prepare_domain_transfer_from_npz_and_imagefolder(tmp_path):
    digits = load_digits_set(LoadOptions(8, 1))
    np.savez(tmp_path / "src.npz", x=digits.x[:, 0], y=digits.y)
    target = _write_folder_dataset(tmp_path / "target")
    p = DataParams(source=str(tmp_path / "src.npz"), target=str(target), source_classes=None, target_classes=None,
                   shots=4, image_size=28)
    m = prepare(p, tmp_path / "prepared")
    train, test = (load_prepared(tmp_path / "prepared" / f) for f in ("target_train.npz", "target_test.npz"))
    assert m["scenario"] == "domain transfer"
    assert train.class_names == [f"c{k}" for k in range(10)] and len(train) == 40
    assert len(test) == 60 and test.x.shape[1:] == (1, 28, 28)  # the test/ split, not leftovers
    assert m["counts"]["source"]["0"] == int((digits.y == 0).sum())


def test_pretrain_learns_the_source_classes():
    src = load_digits_set(LoadOptions(16, 1))
    keep = np.flatnonzero(src.y < 3)
    source = ImageSet(src.x[keep], src.y[keep], ["0", "1", "2"])
    model, cfg, summary = pretrain(source, ClassifierParams(width=8, steps=60, batch_size=32), CPU)
    assert cfg.n_classes == 3 and cfg.image_size == 16
    assert summary["source_holdout_accuracy"] > 0.8  # chance is 0.33


def _tiny_classifier(tmp_path, n_classes=3):
    cfg = ClassifierConfig("convnet", n_classes, 1, 16, 8)
    torch.manual_seed(0)
    path = tmp_path / "clf.pt"
    save_classifier(path, build_classifier(cfg), cfg, [str(k) for k in range(n_classes)], {})
    return path


def test_finetune_replaces_head_and_is_deterministic(tmp_path):
    clf = _tiny_classifier(tmp_path, n_classes=3)
    d = load_digits_set(LoadOptions(16, 1))
    idx = np.concatenate([np.flatnonzero(d.y == k)[:5] for k in (5, 6)])
    train = ImageSet(d.x[idx], (d.y[idx] == 6).astype(np.int64), ["5", "6"])
    p = FinetuneParams(steps=10, batch_size=8)
    m1, cfg, s1 = finetune(clf, train, p, CPU)
    m2, _, _ = finetune(clf, train, p, CPU)
    assert cfg.n_classes == 2 and m1.head.out_features == 2 and s1["train_images"] == 10
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    before = load_classifier(clf)[0].state_dict()["body.0.0.weight"]
    assert not torch.equal(before, m1.state_dict()["body.0.0.weight"])  # backbone fine-tuned too


def _stream_dir(root: Path, syn_paths: list[str], n_source: int, n_classes: int, seed: int = 0) -> Path:
    """Stream labels as distill writes them: the synthetic images by path, then `n_source` source rows."""
    g = np.random.default_rng(seed)
    probs = g.dirichlet(np.ones(n_classes), len(syn_paths) + n_source)
    df = stream_frame(["synthetic"] * len(syn_paths) + ["source"] * n_source,
                      list(syn_paths) + [str(i) for i in range(n_source)],
                      np.r_[np.zeros(len(syn_paths), int), -np.ones(n_source, int)], probs)
    root.mkdir(parents=True)
    write_stream_labels(root, df, {"temperature": 2.0, "variants": ["baseline"], "seeds": [0],
                                   "mean_of": [{"file": "models/finetune/baseline.pt", "variant": "baseline",
                                                "seed": 0, "sha256": "0" * 64}]})
    return root


def test_concat_publishes_every_stream_image_with_its_probabilities_and_a_hard_view_of_real_shots(tmp_path):
    d = load_digits_set(LoadOptions(16, 1))
    real = ImageSet(d.x[:6], np.array([0, 1, 0, 1, 0, 1]), ["a", "b"])
    source = ImageSet(d.x[100:110], np.zeros(10, np.int64), ["s"])
    syn_root = tmp_path / "synthetic"
    paths = write_pngs(syn_root, d.x[6:10], np.array([0, 0, 1, 1]), ["a", "b"], stem="syn")
    pd.DataFrame({"path": paths, "label": [0, 0, 1, 1], "class_name": ["a", "a", "b", "b"], "origin": "synthetic",
                  "generator_sha256": "f" * 64, "seed": [0, 0, 0, 0]}).to_parquet(syn_root / "manifest.parquet")
    stream = _stream_dir(tmp_path / "stream", paths, 3, 2)
    df = concat(real, syn_root, stream, tmp_path / "augmented", source=source)
    assert list(df.columns) == PUBLISHED_COLUMNS
    assert df["origin"].value_counts().to_dict() == {"real": 6, "synthetic": 4, "source": 3}
    labels, _ = read_stream_labels(stream)
    probs = np.stack(df["probs"].to_numpy())
    assert np.array_equal(probs[6:], labels.attrs["probs"])  # published as distill wrote them, not recomputed
    assert np.array_equal(probs[:6], np.eye(2, dtype=np.float32)[real.y])  # real shots: one-hot
    assert df["hard_view"].tolist() == [True] * 6 + [False] * 7  # shipped default: the class folders hold the shots
    assert df.loc[~df.hard_view, "label"].isna().all() and df.loc[df.hard_view, "label"].tolist() == real.y.tolist()
    folder = ImageFolder(str(tmp_path / "augmented"))
    assert len(folder) == 6 and folder.class_to_idx == {"0_a": 0, "1_b": 1}  # top-level images are in no class
    back = load_training_set([tmp_path / "augmented"], 16, 1)
    assert len(back) == 6 and np.array_equal(back.x, real.x)
    src_png = np.asarray(Image.open(tmp_path / "augmented" / df.loc[df.origin == "source", "path"].iloc[1]))
    assert np.array_equal(src_png, source.x[1, 0])  # source row 1 is the source set's image 1
    assert pq.read_schema(tmp_path / "augmented/manifest.parquet").metadata[b"ganaug_manifest_schema"] == b"ganaug-manifest/2"
    assert not list(tmp_path.glob(".augmented.tmp-*"))
    no_src = concat(real, syn_root, stream, tmp_path / "augmented", publish=PublishParams(source_images=False))
    assert "source" not in set(no_src["origin"]) and not list((tmp_path / "augmented").glob("src_*"))


def test_hard_view_confident_keeps_confident_synthetic_images_up_to_k_per_shot():
    origin = np.array(["real", "real", "synthetic", "synthetic", "synthetic", "synthetic", "source"])
    asked = np.array([0, 1, 0, 0, 0, 1, -1])
    probs = np.array([[1, 0], [0, 1], [0.95, 0.05], [0.99, 0.01], [0.97, 0.03], [0.2, 0.8], [0.99, 0.01]])
    counts = np.array([1, 1])
    assert hard_view(origin, asked, probs, counts, PublishParams()).tolist() == [True, True] + [False] * 5
    p = PublishParams(hard_view="confident", min_confidence=0.9, max_per_shot=2)
    assert hard_view(origin, asked, probs, counts, p).tolist() == [True, True, False, True, True, False, False]
    p1 = p.model_copy(update={"max_per_shot": 1})
    assert hard_view(origin, asked, probs, counts, p1).tolist() == [True, True, False, True, False, False, False]


def test_evaluate_reports_both_variants(tmp_path, monkeypatch):
    clf = _tiny_classifier(tmp_path, n_classes=2)
    d = load_digits_set(LoadOptions(16, 1))
    idx = np.concatenate([np.flatnonzero(d.y == k)[:20] for k in (0, 1)])
    test = ImageSet(d.x[idx], (d.y[idx] == 1).astype(np.int64), ["0", "1"])
    results, preds = evaluate({"baseline": clf, "augmented": clf}, test, EvalParams(), CPU)
    deltas = compare(results, preds, test)
    assert results["baseline"]["accuracy"] == results["augmented"]["accuracy"]
    assert deltas["augmented"]["macro_f1"]["delta"] == 0.0
    monkeypatch.chdir(tmp_path)
    write_outputs(results, deltas, test)
    for f in ("metrics/eval.json", "reports/eval.md", "reports/per_class.csv", "plots/confusion_baseline.png",
              "plots/confusion_augmented.csv"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert "did not clearly help" in (tmp_path / "reports/eval.md").read_text()
    assert len(pd.read_csv(tmp_path / "plots/confusion_baseline.csv")) == 40


def test_evaluate_refuses_a_model_for_other_classes(tmp_path):
    clf = _tiny_classifier(tmp_path, n_classes=2)
    d = load_digits_set(LoadOptions(16, 1))
    test = ImageSet(d.x[:4], np.array([0, 1, 2, 0]), ["x", "y", "z"])
    with pytest.raises(UserError, match="trained for classes"):
        evaluate({"baseline": clf}, test, EvalParams(), CPU)


def test_torchvision_arch_loads_local_weights_or_says_where_to_put_them(tmp_path, monkeypatch):
    import torchvision

    from ganaug.nets.classifier import TorchvisionNet, load_imagenet_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    cfg = ClassifierConfig("resnet18", 5, 1, 16, 0)
    model = TorchvisionNet(cfg)
    with pytest.raises(UserError, match="resnet18-.*pth not found"):
        load_imagenet_weights(model, "resnet18")
    # a file in the cache (here: torchvision's architecture with its own init, saved as torchvision does) is loaded
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    load_imagenet_weights(model, "resnet18")
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 5)


def test_verdicts_and_recommendation_follow_the_interval():
    from ganaug.judge.verdicts import recommendation, verdict

    assert verdict("gan", 0.02, 0.01, 0.03).startswith("gan helped")
    assert verdict("gan", -0.02, -0.03, -0.01).startswith("gan hurt")
    assert "did not clearly help" in verdict("gan", 0.01, -0.01, 0.03)

    def d(delta, lo, hi):
        return {"macro_f1": {"delta": delta, "ci95_low": lo, "ci95_high": hi}}

    none = recommendation({"gan": d(0.02, -0.01, 0.05), "source": d(-0.03, -0.05, -0.01)})
    assert none.startswith("Recommendation: keep baseline") and "did not clearly help" in none
    pick = recommendation({"gan": d(0.05, 0.001, 0.1), "source": d(0.03, 0.02, 0.04), "gan_source": d(0.0, -0.1, 0.1)})
    assert pick.startswith("Recommendation: use source")  # the highest lower bound, not the highest mean
