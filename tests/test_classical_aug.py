"""Classical augmentation (`finetune.augment`, finetune `--augment`): registry, randomness, resume, the stage's CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from ganaug.config.errors import UserError
from ganaug.config.params import AUGMENT_POLICIES, FinetuneParams, parse_params, ParamsError
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, save_prepared, to_float
from ganaug.nets.classifier import ClassifierConfig, build_classifier, load_classifier, save_classifier
from ganaug.train.classical_aug import POLICIES, ClassicalAugment, build_augment, check_policy, random_crop
from ganaug.train.finetune import finetune
from ganaug.train.fit import FitConfig, fingerprint, fit
from stages.finetune import main as finetune_main

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_digits_set(LoadOptions(16, 1))


def batch(digits: ImageSet, n: int = 16) -> torch.Tensor:
    return to_float(digits.x[:n])  # (n, 1, 16, 16) in [-1, 1]


def test_registry_matches_the_params_schema_and_refuses_unknown_names():
    assert tuple(POLICIES) == AUGMENT_POLICIES
    assert build_augment("none") is None
    assert isinstance(build_augment("randaugment"), ClassicalAugment)
    with pytest.raises(UserError, match=r"unknown augmentation policy 'autoaugment'; allowed: none, crop, trivialaugment"):
        check_policy("autoaugment")
    with pytest.raises(ParamsError, match=r"finetune.augment: got 'flip'; allowed: 'none', 'crop', 'trivialaugment'"):
        parse_params({"finetune": {"augment": "flip"}})
    with pytest.raises(ParamsError, match=r"finetune.synth_augment: got 'mixup'"):  # the stream's labels are not mixed
        parse_params({"finetune": {"synth_augment": "mixup"}})
    assert parse_params({"finetune": {"augment": "cutmix", "real_augment": "mixup"}}).finetune.augment == "cutmix"


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment", "elastic", "crop"])
def test_augment_is_a_pure_function_of_the_batch_and_generator(digits, policy):
    x, aug = batch(digits), build_augment(policy)
    torch.manual_seed(5)
    global_before = torch.get_rng_state()
    a = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), global_before)  # dropout etc. see the same global RNG
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # most images are altered
    assert len({tuple(img.flatten().tolist()) for img in (a - x)}) > 1  # not one transform for the whole batch


def test_random_crop_shifts_each_image_within_the_padding():
    x = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 8, 8] = 255  # one bright pixel in the middle
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(random_crop(x, 0, torch.Generator()), x)
    where = [(int(i) // 16, int(i) % 16) for i in out.view(64, -1).argmax(1)]
    assert all(6 <= r <= 10 and 6 <= c <= 10 for r, c in where)
    assert len(set(where)) > 10  # shifts drawn per image (25 possible)
    assert (out.view(64, -1) == 255).sum(1).eq(1).all()  # never cropped out with pad < size/2


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                        torch.nn.Dropout(0.2), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x))


def _fit(x, y, cfg, aug, **kw):
    torch.manual_seed(0)
    model = SmallNet()
    torch.manual_seed(123)
    summary = fit(model, x, y, cfg, CPU, augment=aug, **kw)
    return model.state_dict(), summary


def test_fit_with_classical_augment_resumes_bit_identically(tmp_path, digits):
    x, y = batch(digits, 80), torch.as_tensor(digits.y[:80])
    cfg = FitConfig(steps=12, batch_size=16, lr=5e-3, seed=3, checkpoint_every=5)
    aug = build_augment("trivialaugment")
    reference, _ = _fit(x, y, cfg, aug)
    ckpt = tmp_path / "fit.pt"
    _, s1 = _fit(x, y, cfg, aug, ckpt_path=ckpt, stop_after=8)
    assert s1["stopped"] and ckpt.is_file()
    torch.manual_seed(999)
    resumed, s2 = _fit(x, y, cfg, aug, ckpt_path=ckpt)
    assert s2["resumed_from"] == 5
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    plain, _ = _fit(x, y, cfg, None)
    assert not torch.equal(plain["head.weight"], reference["head.weight"])  # the augmentation did something
    fps = {fingerprint(SmallNet(), x, y, cfg, CPU, build_augment(p, 10)) for p in POLICIES}
    assert len(fps) == len(POLICIES)  # a checkpoint of one policy never resumes another


@pytest.mark.parametrize("policy", ["mixup", "cutmix"])
def test_label_mixing_policies_mix_images_and_labels_alike(digits, policy):
    x, y = batch(digits, 32), torch.as_tensor(digits.y[:32])
    aug = build_augment(policy, 10)
    a, pa = aug.mix(x, y, torch.Generator().manual_seed(1))
    b, pb = aug.mix(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(pa, pb) and a.shape == x.shape and pa.shape == (32, 10)
    assert torch.allclose(pa.sum(1), torch.ones(32)) and (pa >= 0).all()
    assert (pa.max(1).values < 1).any()  # some labels are mixtures of two classes
    assert (pa[torch.arange(32), y] > 0).all() and ((pa > 0).sum(1) <= 2).all()  # its own class and one other


def test_fit_with_a_label_mixing_policy_resumes_bit_identically(tmp_path, digits):
    x, y = batch(digits, 80), torch.as_tensor(digits.y[:80])
    cfg = FitConfig(steps=10, batch_size=16, lr=5e-3, seed=3, checkpoint_every=5)
    aug = build_augment("mixup", 10)
    reference, _ = _fit(x, y, cfg, aug)
    _, s1 = _fit(x, y, cfg, aug, ckpt_path=tmp_path / "fit.pt", stop_after=7)
    resumed, s2 = _fit(x, y, cfg, aug, ckpt_path=tmp_path / "fit.pt")
    assert s1["stopped"] and s2["resumed_from"] == 5
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    crop_only, _ = _fit(x, y, cfg, build_augment("crop"))
    assert not torch.equal(crop_only["head.weight"], reference["head.weight"])  # the mixing changed the training


def _tiny_setup(tmp_path, digits):
    cfg = ClassifierConfig("convnet", 3, 1, 16, 8)
    torch.manual_seed(0)
    clf = tmp_path / "models" / "classifier.pt"
    clf.parent.mkdir(parents=True)
    save_classifier(clf, build_classifier(cfg), cfg, ["0", "1", "2"], {})
    idx = np.concatenate([np.flatnonzero(digits.y == k)[:6] for k in (5, 6)])
    train = ImageSet(digits.x[idx], (digits.y[idx] == 6).astype(np.int64), ["5", "6"])
    save_prepared(tmp_path / "train.npz", train)
    return clf, train


def test_finetune_variants_differ_only_by_augmentation(tmp_path, digits):
    clf, train = _tiny_setup(tmp_path, digits)
    p = FinetuneParams(steps=6, batch_size=8)
    plain, _, s_plain = finetune(clf, train, p, CPU)
    again, _, _ = finetune(clf, train, p, CPU, augment="none")
    aug, _, s_aug = finetune(clf, train, p, CPU, augment="trivialaugment")
    assert s_plain["augment"] == "none" and s_aug["augment"] == "trivialaugment"
    assert torch.equal(plain.head.weight, again.head.weight)
    assert not torch.equal(plain.head.weight, aug.head.weight)


def test_finetune_stage_cli_takes_augment_and_refuses_unknown_policy(tmp_path, digits, monkeypatch, capsys):
    _tiny_setup(tmp_path, digits)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"finetune": {"steps": 4, "batch_size": 8}}))
    with pytest.raises(SystemExit) as info:
        finetune_main(["--variant", "x", "--train", "train.npz", "--augment", "autoaugment"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "unknown augmentation policy 'autoaugment'; allowed: none, crop, trivialaugment" in err
    assert not (tmp_path / "models/finetune").exists()
    finetune_main(["--variant", "classical", "--train", "train.npz", "--augment", "randaugment"])
    blob = torch.load(tmp_path / "models/finetune/classical.pt", map_location="cpu", weights_only=True)
    assert blob["summary"]["augment"] == "randaugment"
    assert load_classifier(tmp_path / "models/finetune/classical.pt")[2] == ["5", "6"]
