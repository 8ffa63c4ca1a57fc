"""Bring your own models (issue #14): a user's classifier as the pretrained classifier
(`classifier.weights: file`), a GAN ganaug trained before as the GAN's start (`gan.init: checkpoint`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pydantic import ValidationError

from ganaug.config.errors import UserError
from ganaug.config.params import ClassifierParams, GanParams
from ganaug.io.data import LoadOptions, load_digits_set, select_classes, to_float
from ganaug.nets.classifier import ClassifierConfig, build_classifier, save_classifier
from ganaug.train.gan import BalancedBatches, GanTrainConfig, GanTrainer, load_source_gan, train_gan, CLASS_SPECIFIC
from ganaug.nets.gan import GanConfig
from stages.pretrain import pretrain
from stages.pretrain_gan import pretrain_gan

CPU = torch.device("cpu")


def source(k: int = 3):
    ds = select_classes(load_digits_set(LoadOptions(16, 1)), list(range(k)))
    return ds.subset(np.concatenate([np.flatnonzero(ds.y == c)[:10] for c in range(k)]))


def _equal_except(a: dict, b: dict, skip: tuple[str, ...]) -> bool:
    keys = [k for k in a if not k.startswith(skip)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


def test_a_convnet_state_dict_with_other_classes_is_used_as_it_is(tmp_path):
    torch.manual_seed(3)
    mine = build_classifier(ClassifierConfig("convnet", n_classes=7, width=8))  # 7 classes: the head is replaced
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    model, cfg, summary = pretrain(source(), ClassifierParams(width=8, steps=0, weights="file",
                                                              checkpoint=str(tmp_path / "mine.pt")), CPU)
    assert _equal_except(model.state_dict(), mine.state_dict(), ("head.",)) and cfg.n_classes == 3
    assert summary["start_checkpoint_sha256"] and summary["steps"] == 0


def test_a_ganaug_classifier_file_and_a_torchvision_state_dict_load(tmp_path):
    cfg = ClassifierConfig("convnet", n_classes=5, width=8)
    torch.manual_seed(4)
    theirs = build_classifier(cfg)
    save_classifier(tmp_path / "classifier.pt", theirs, cfg, list("abcde"), {})
    model, _, _ = pretrain(source(), ClassifierParams(width=8, steps=0, weights="file",
                                                      checkpoint=str(tmp_path / "classifier.pt")), CPU)
    assert _equal_except(model.state_dict(), theirs.state_dict(), ("head.",))

    resnet = torchvision.models.resnet18(weights=None)  # as torchvision writes it: fc with 1000 classes
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pt")
    model, _, _ = pretrain(source(), ClassifierParams(arch="resnet18", steps=0, weights="file",
                                                      checkpoint=str(tmp_path / "resnet18.pt")), CPU)
    assert _equal_except(model.backbone.state_dict(), resnet.state_dict(), ("fc.",))


def _bad_files(tmp):
    torch.save(build_classifier(ClassifierConfig("convnet", width=16)).state_dict(), tmp / "wide.pt")
    torch.save({"weight": torch.zeros(3)}, tmp / "other.pt")
    torch.save({"not": object()}, tmp / "pickle.pt")  # not loadable with weights_only=True
    cfg = ClassifierConfig("resnet18", n_classes=2)
    save_classifier(tmp / "resnet_file.pt", build_classifier(cfg), cfg, ["a", "b"], {})
    return {
        "missing.pt": r"missing.pt: file not found",
        "wide.pt": r"wide.pt: shapes do not fit classifier.arch=convnet and its width/channels: body.0.0.weight "
                   r"\(16, 1, 3, 3\) \(needs \(8, 1, 3, 3\)\)",
        "other.pt": r"other.pt: not a convnet state dict; missing \['body.0.0.weight'",
        "pickle.pt": r"pickle.pt: not readable as weights only",
        "resnet_file.pt": r"resnet_file.pt: a ganaug 'resnet18' classifier; classifier.arch is 'convnet'",
    }


def test_a_classifier_that_does_not_fit_is_a_clear_error(tmp_path):
    for name, message in _bad_files(tmp_path).items():
        p = ClassifierParams(width=8, steps=0, weights="file", checkpoint=str(tmp_path / name))
        with pytest.raises(UserError, match=r"^classifier.checkpoint: .*" + message):
            pretrain(source(), p, CPU)


def test_weights_file_and_checkpoint_go_together():
    with pytest.raises(ValidationError, match="weights 'file' and checkpoint go together"):
        ClassifierParams(weights="file")
    with pytest.raises(ValidationError, match="init 'checkpoint' and init_checkpoint go together"):
        GanParams(init="checkpoint")


TINY_GAN = dict(steps=4, z_dim=8, g_width=8, d_width=8, batch_size=6, ema_start=1)


def test_a_gan_of_another_run_starts_the_target_gan(tmp_path):
    train_gan(source(3), GanParams(**TINY_GAN), tmp_path / "theirs.pt", tmp_path / "ckpt", CPU)
    p = GanParams(**TINY_GAN, init="checkpoint", init_checkpoint=str(tmp_path / "theirs.pt"), freeze="d_lower")
    pretrain_gan(None, p, tmp_path / "gan_source.pt", tmp_path / "ckpt", CPU)
    start = load_source_gan(tmp_path / "gan_source.pt")
    target = select_classes(load_digits_set(LoadOptions(16, 1)), [7, 8])  # other classes, and 2 of them
    cfg = GanConfig(2, 16, 1, 8, 8, 8)
    real = BalancedBatches(to_float(target.x[:12]), torch.as_tensor(target.y[:12]), 2)
    trainer = GanTrainer(cfg, GanTrainConfig.from_params(p), real, CPU, start)
    theirs = torch.load(tmp_path / "theirs.pt", weights_only=True)
    skip = tuple(k for k in theirs["generator"] if CLASS_SPECIFIC in k.split("."))
    assert _equal_except(trainer.g_net.state_dict(), theirs["generator"], skip)
    out = train_gan(target.subset(np.arange(12)), p, tmp_path / "gan.pt", tmp_path / "ckpt2", CPU,
                    source_path=tmp_path / "gan_source.pt")
    assert out["steps"] == 4 and (tmp_path / "gan.pt").is_file()


def test_a_gan_that_does_not_fit_is_a_clear_error(tmp_path):
    train_gan(source(3), GanParams(**TINY_GAN), tmp_path / "theirs.pt", tmp_path / "ckpt", CPU)
    cfg = ClassifierConfig("convnet", width=8)
    save_classifier(tmp_path / "clf.pt", build_classifier(cfg), cfg, ["a"] * 10, {})
    cases = {"theirs.pt": (dict(z_dim=16), r"theirs.pt: does not fit the gan params: gan.z_dim=16 but the checkpoint has 8"),
             "clf.pt": ({}, r"clf.pt: not a GAN checkpoint written by ganaug's train_gan"),
             "nope.pt": ({}, r"nope.pt: file not found")}
    for name, (change, message) in cases.items():
        p = GanParams(**{**TINY_GAN, **change}, init="checkpoint", init_checkpoint=str(tmp_path / name))
        with pytest.raises(UserError, match=r"^gan.init_checkpoint: .*" + message):
            pretrain_gan(None, p, tmp_path / "gan_source.pt", tmp_path / "ckpt", CPU)
        assert not (tmp_path / "gan_source.pt").exists()
