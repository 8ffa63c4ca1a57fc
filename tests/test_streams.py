"""The second fine-tuning stream (issue #11): batch sizes, the weight-0 invariant, teacher labels, resumption."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganaug.config.errors import UserError
from ganaug.config.params import FinetuneParams, load_params
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, load_prepared, save_prepared, to_float
from ganaug.nets.classifier import ClassifierConfig, build_classifier, load_classifier, save_classifier
from ganaug.train.finetune import build_stream, finetune, teacher_paths
from ganaug.train.fit import FitConfig, fit
from ganaug.train.streams import Stream, stream_loss, teacher_probs
from stages.teachers import train_teachers

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return load_digits_set(LoadOptions(16, 1))


def _classifier(path: Path, n_classes: int, seed: int = 0, variant: str | None = None, names=None) -> Path:
    cfg = ClassifierConfig(n_classes=n_classes, width=8)
    torch.manual_seed(seed)
    names = names or [str(k) for k in range(n_classes)]
    save_classifier(path, build_classifier(cfg), cfg, names, {"variant": variant} if variant else {})
    return path


def _shots(d: ImageSet, classes=(5, 6, 7), k: int = 4) -> ImageSet:
    idx = np.concatenate([np.flatnonzero(d.y == c)[:k] for c in classes])
    return ImageSet(d.x[idx], np.searchsorted(classes, d.y[idx]).astype(np.int64), [str(c) for c in classes])


def _stream(d: ImageSet, n: int = 40, n_classes: int = 3) -> Stream:
    x = to_float(d.x[-n:])
    g = torch.Generator().manual_seed(1)
    soft = F.softmax(torch.randn(n, n_classes, generator=g), 1)
    hard = torch.arange(n) % n_classes
    return Stream(x, soft, hard, temperature=2.0)


def test_every_step_draws_a_real_and_a_stream_batch_of_the_configured_sizes(digits):
    train = _shots(digits)
    model = build_classifier(ClassifierConfig(n_classes=3, width=8))
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    cfg = FitConfig(steps=5, batch_size=7, lr=1e-3, stream_batch=11)
    fit(model, to_float(train.x), torch.tensor(train.y), cfg, CPU, stream=_stream(digits))
    assert sizes == [7, 11] * 5  # real first, then the stream, every step; never mixed
    sizes.clear()
    fit(model, to_float(train.x), torch.tensor(train.y), FitConfig(4, 7, 1e-3, stream_batch=11, bn="joint"), CPU,
        stream=_stream(digits))
    assert sizes == [18] * 4  # bn=joint: one forward of both batches together
    sizes.clear()
    fit(model, to_float(train.x), torch.tensor(train.y),
        FitConfig(6, 7, 1e-3, stream_batch=11, schedule="synthetic_first", first_fraction=0.5), CPU, stream=_stream(digits))
    assert sizes == [11] * 3 + [7] * 3  # synthetic_first: the stream alone, then the real shots alone


@pytest.mark.parametrize("bn", ["shipped", "real", "frozen"])
def test_stream_weight_zero_gives_the_real_only_model_bit_for_bit(tmp_path, digits, bn):
    """Under params.yaml's finetune section as it ships (bn: joint, its batch sizes, steps and seeds), and
    under the other BatchNorm treatments: synth_weight 0 trains the real-only model, weights and statistics."""
    clf = _classifier(tmp_path / "clf.pt", 10)
    train = _shots(digits)
    p = load_params(ROOT / "params.yaml").finetune
    if bn != "shipped":
        p = p.model_copy(update={"bn": bn})
    real_only, _, _ = finetune(clf, train, p, CPU)
    zero, _, _ = finetune(clf, train, p.model_copy(update={"synth_weight": 0.0}), CPU, stream=_stream(digits))
    for (k, a), b in zip(real_only.state_dict().items(), zero.state_dict().values()):
        assert torch.equal(a, b), k  # weights and BatchNorm statistics: the stream changed nothing
    weighted, _, _ = finetune(clf, train, p.model_copy(update={"steps": 12}), CPU, stream=_stream(digits))
    short, _, _ = finetune(clf, train, p.model_copy(update={"steps": 12}), CPU)
    assert not torch.equal(short.head.weight, weighted.head.weight)  # and with its weight as shipped it does train


def test_stream_loss_is_distillation_cross_entropy_or_their_blend():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    hard = torch.tensor([0, 1, 2, 3, -1, 1])
    soft = F.softmax(logits / 2.0, 1)  # the student already matches the teacher: KL is 0
    assert stream_loss(logits, soft, hard, 2.0, 0.0).abs().item() < 1e-6
    other = F.softmax(torch.randn(6, 4, generator=g), 1)
    kd = stream_loss(logits, other, hard, 2.0, 0.0)
    assert kd.item() > 0
    ce_rows = F.cross_entropy(logits, hard.clamp(min=0), reduction="none")
    kd_rows = (other * (other.log() - F.log_softmax(logits / 2.0, 1))).sum(1) * 4.0
    has = (hard >= 0).float()
    for h in (1.0, 0.5):  # rows without a hard label (source images) take the distillation term alone
        expect = ((1 - h * has) * kd_rows + h * has * ce_rows).mean()
        assert torch.allclose(stream_loss(logits, other, hard, 2.0, h), expect, atol=1e-6)


def test_soft_labels_come_from_the_teachers_named_in_params(tmp_path, digits):
    train = _shots(digits)
    names = train.class_names
    base = _classifier(tmp_path / "baseline.pt", 3, seed=1, variant="baseline", names=names)
    cls = _classifier(tmp_path / "classical.pt", 3, seed=2, variant="classical", names=names)
    src = ImageSet(digits.x[:50], digits.y[:50] % 5, [str(k) for k in range(5)])
    save_prepared(tmp_path / "source.npz", src)
    p = FinetuneParams(temperature=3.0, source_images=20)
    stream = build_stream([tmp_path / "source.npz"], train, [base], p, 64, CPU)
    assert len(stream) == 20 and (stream.hard == -1).all()  # source images: no hard label over the target classes
    x = stream.x
    teacher = load_classifier(base)[0].eval()
    with torch.no_grad():
        expect = F.softmax(teacher(x) / 3.0, 1)
    assert torch.allclose(stream.soft, expect, atol=1e-6)
    both = build_stream([tmp_path / "source.npz"], train, [base, cls], p, 64, CPU)
    with torch.no_grad():
        second = F.softmax(load_classifier(cls)[0].eval()(x) / 3.0, 1)
    assert torch.allclose(both.soft, (expect + second) / 2, atol=1e-6)  # several teachers: their mean
    assert torch.allclose(teacher_probs([teacher], x, 3.0, 7, CPU), expect, atol=1e-6)  # batching changes nothing


def test_teacher_seeds_average_the_teachers_recipe_over_more_seeds(tmp_path, digits):
    train = _shots(digits)
    pretrained = _classifier(tmp_path / "classifier.pt", 5, seed=0)
    p1 = FinetuneParams(steps=3, batch_size=4, source_images=20, seed=7, teacher=["baseline"], teacher_seeds=1)
    base_model, cfg, _ = finetune(pretrained, train, p1, CPU)  # the `baseline` variant at finetune.seed
    save_classifier(tmp_path / "baseline.pt", base_model, cfg, train.class_names, {"variant": "baseline"})
    save_prepared(tmp_path / "source.npz", ImageSet(digits.x[:50], digits.y[:50] % 5, [str(k) for k in range(5)]))

    assert train_teachers(pretrained, train, p1, CPU, tmp_path / "t1")["files"] == []  # teacher_seeds 1: the index alone
    one = build_stream([tmp_path / "source.npz"], train, teacher_paths(p1, tmp_path, tmp_path / "t1"), p1, 64, CPU)
    p2 = p1.model_copy(update={"teacher_seeds": 2})
    assert train_teachers(pretrained, train, p2, CPU, tmp_path / "t2")["files"] == ["baseline_seed8.pt"]
    paths = teacher_paths(p2, tmp_path, tmp_path / "t2")
    assert paths == [tmp_path / "baseline.pt", tmp_path / "t2" / "baseline_seed8.pt"]
    two = build_stream([tmp_path / "source.npz"], train, paths, p2, 64, CPU)
    again, _, _ = finetune(pretrained, train, p1.model_copy(update={"seed": 8}), CPU)  # the same recipe at seed + 1
    second = teacher_probs([again], one.x, p1.temperature, 64, CPU)
    assert torch.allclose(two.soft, (one.soft + second) / 2, atol=1e-6) and not torch.allclose(two.soft, one.soft)
    # seed teachers made for other params are refused, not silently used
    with pytest.raises(UserError, match=r"teachers.json: made for teacher \['baseline'\], teacher_seeds 1"):
        teacher_paths(p2, tmp_path, tmp_path / "t1")
    with pytest.raises(UserError, match="no index of the seed teachers"):
        teacher_paths(p1, tmp_path, tmp_path / "missing")


def test_a_teacher_that_saw_synthetic_or_other_data_is_refused(tmp_path, digits):
    train = _shots(digits)
    save_prepared(tmp_path / "source.npz", ImageSet(digits.x[:10], digits.y[:10] % 5, [str(k) for k in range(5)]))
    gan_model = _classifier(tmp_path / "gan.pt", 3, variant="gan", names=train.class_names)
    with pytest.raises(UserError, match="a teacher must be a real-shot variant"):
        build_stream([tmp_path / "source.npz"], train, [gan_model], FinetuneParams(), 64, CPU)
    other = _classifier(tmp_path / "b.pt", 3, variant="baseline", names=["a", "b", "c"])
    with pytest.raises(UserError, match="teacher trained for classes"):
        build_stream([tmp_path / "source.npz"], train, [other], FinetuneParams(), 64, CPU)


def test_fit_with_a_stream_resumes_bit_identically(tmp_path, digits):
    train = _shots(digits)
    x, y = to_float(train.x), torch.tensor(train.y)
    cfg = FitConfig(steps=8, batch_size=6, lr=1e-3, stream_batch=9, checkpoint_every=3, hard_weight=0.5)

    def model():
        torch.manual_seed(0)
        return build_classifier(ClassifierConfig(n_classes=3, width=8))

    whole = model()
    fit(whole, x, y, cfg, CPU, stream=_stream(digits))
    ckpt = tmp_path / "ft.pt"
    part = model()
    assert fit(part, x, y, cfg, CPU, stream=_stream(digits), ckpt_path=ckpt, stop_after=5)["stopped"]
    resumed = model()  # a new process: fresh weights, resumed from the checkpoint of step 3
    assert fit(resumed, x, y, cfg, CPU, stream=_stream(digits), ckpt_path=ckpt)["resumed_from"] == 3
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_pipeline_teachers_learn_from_the_real_shots_only(tiny_repro):
    project = tiny_repro.project
    train = load_prepared(project / "data/restored/target_train.npz")
    test = load_prepared(project / "data/restored/target_test.npz")
    for variant in ("gan", "source", "gan_source"):
        summary = torch.load(project / f"models/finetune/{variant}.pt", weights_only=True)["summary"]
        assert summary["teacher"] == ["baseline", "classical"] and summary["stream_images"] > 0
    p = load_params(project / "params.yaml").finetune
    paths = teacher_paths(p, project / "models/finetune", project / "models/teachers")
    assert len(paths) == len(p.teacher) * p.teacher_seeds > 2  # baseline.pt, classical.pt and models/teachers/*
    for path in paths:  # every teacher file the stream's labels came from
        teacher = torch.load(path, weights_only=True)["summary"]
        assert teacher["variant"] in ("baseline", "classical"), path
        assert teacher["train"] == "data/restored/target_train.npz" and teacher["train_images"] == len(train), path
    train_rows = {bytes(img) for img in train.x.reshape(len(train), -1)}
    assert not any(bytes(img) in train_rows for img in test.x.reshape(len(test), -1))  # no test image in training
