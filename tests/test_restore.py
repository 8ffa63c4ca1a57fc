"""Restoration (issue #16): seeded corruptions, restorers that keep known pixels, image metrics, the `restore`
stage's core. (`dvc exp run -S restore.enabled=true -S data.corrupt=occlusion:0.3` end to end: tests/test_exp_runs.py.)"""
from __future__ import annotations

import filecmp
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ganaug.config.params import ParamsError, parse_params
from ganaug.io.data import ImageSet
from ganaug.nets.classifier import ClassifierConfig, build_classifier, save_classifier
from ganaug.judge.image_quality import PSNR_CAP, psnr, ssim
from ganaug.nets.restorer import RestorerConfig, UNet
from ganaug.restore.classical import CLASSICAL, restore_classical
from ganaug.restore.corruptions import CORRUPTIONS, FILL, corrupt, parse_spec
from ganaug.train.restorer import RestoreTrainConfig, meta_restorer, restore_images, train_restorer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits16() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits at 16x16, uint8 (N, 1, 16, 16), and their labels."""
    d = load_digits()
    x = F.interpolate(torch.from_numpy(d.images[:, None]).float(), size=16, mode="bilinear")
    return x.mul(16).clamp(0, 255).round().to(torch.uint8).numpy(), d.target


# --- corruptions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corruption_is_seeded_and_changes_the_images(digits16, name):
    x = digits16[0][:64]
    a, ka = corrupt(x, f"{name}:0.3", seed=5)
    b, kb = corrupt(x, f"{name}:0.3", seed=5)
    c, _ = corrupt(x, f"{name}:0.3", seed=6)
    assert np.array_equal(a, b) and np.array_equal(ka, kb)
    assert a.dtype == np.uint8 and a.shape == x.shape and ka.shape == (64, 1, 16, 16)
    assert not np.array_equal(a, x)
    assert name == "blur" or not np.array_equal(a, c)  # blur draws nothing at random
    assert np.array_equal(a[np.broadcast_to(ka, a.shape)], x[np.broadcast_to(ka, x.shape)])  # known = clean


@pytest.mark.parametrize("name, severity", [("occlusion", 0.1), ("occlusion", 0.3), ("pixels", 0.1), ("pixels", 0.5)])
def test_missing_pixels_hit_the_configured_fraction(digits16, name, severity):
    x = digits16[0]
    damaged, known = corrupt(x, f"{name}:{severity}", seed=0)
    missing = ~known
    assert abs(missing.mean() - severity) < 0.02
    if name == "occlusion":  # one rectangle per image, within rounding of the asked area
        per_image = missing.reshape(len(x), -1).sum(1)
        assert np.all(np.abs(per_image - severity * 256) <= 16)
    assert np.all(damaged[np.broadcast_to(missing, x.shape)] == FILL)


def test_none_returns_the_images_with_every_pixel_known(digits16):
    x = digits16[0][:8]
    same, known = corrupt(x, "none", seed=0)
    assert np.array_equal(same, x) and known.all()


@pytest.mark.parametrize("spec, problem", [("occ:0.3", "name one of"), ("noise", "name one of"),
                                           ("noise:x", "not a number"), ("noise:0", "(0, 1]"), ("blur:1.5", "(0, 1]")])
def test_a_bad_corruption_spec_is_one_clear_params_error(spec, problem):
    with pytest.raises(ParamsError, match=re.escape(problem)) as info:
        parse_params({"data": {"corrupt": spec}})
    assert str(info.value).startswith("params.yaml: data.corrupt: ") and "\n" not in str(info.value)
    assert parse_spec("occlusion:0.3") == ("occlusion", 0.3)


def test_restore_params_validate():
    with pytest.raises(ParamsError, match="restore.enabled needs a corruption"):
        parse_params({"restore": {"enabled": True}})
    with pytest.raises(ParamsError, match="restore.enabled: expected true or false"):
        parse_params({"restore": {"enabled": "yes"}})
    with pytest.raises(ParamsError, match="restore.steps: expected a number"):
        parse_params({"restore": {"steps": True}})
    p = parse_params({"restore": {"enabled": True, "corruption": "noise:0.2"}})
    assert p.restore.learned_spec(p.data.corrupt) == "noise:0.2"


# --- restorers keep the known pixels ----------------------------------------------------------------

@pytest.mark.parametrize("method", list(CLASSICAL))
@pytest.mark.parametrize("spec", ["occlusion:0.3", "pixels:0.4"])
def test_classical_restorers_never_change_a_known_pixel_when_inpainting(digits16, method, spec):
    x = digits16[0][:32]
    damaged, known = corrupt(x, spec, seed=1)
    out = restore_classical(damaged, known, method, spec.split(":")[0])
    k = np.broadcast_to(known, x.shape)
    if method == "biharmonic":
        assert np.array_equal(out[k], damaged[k]) and not np.array_equal(out, damaged)
        assert psnr(x, out) > psnr(x, damaged)  # filling the holes from their surroundings beats grey
    assert out.dtype == np.uint8 and out.shape == x.shape


def test_the_learned_restorer_keeps_known_pixels_and_returns_an_undamaged_image_bit_for_bit(digits16):
    x = digits16[0][:32]
    torch.manual_seed(0)
    g = UNet(RestorerConfig(1, 16, 8))  # untrained: whatever it predicts, known pixels stay
    damaged, known = corrupt(x, "occlusion:0.3", seed=2)
    out = restore_images(g, damaged, known, CPU)
    k = np.broadcast_to(known, x.shape)
    assert np.array_equal(out[k], damaged[k]) and not np.array_equal(out[~k], damaged[~k])
    assert np.array_equal(restore_images(g, x, np.ones_like(known), CPU), x)


def test_a_restorer_trained_on_noise_repairs_it_and_leaves_clean_images_nearly_unchanged(digits16):
    x, y = digits16
    g, summary = train_restorer(x[y < 5], "noise:0.2", RestoreTrainConfig(steps=150, width=8, batch_size=32), CPU)
    target = x[y >= 5][:200]
    noisy, known = corrupt(target, "noise:0.2", seed=3)
    assert not known.any() and summary["adversarial"]
    repaired = restore_images(g, noisy, known, CPU)
    assert psnr(target, repaired) > psnr(target, noisy) + 3
    clean_out = restore_images(g, target, known, CPU)  # clean input, no pixel marked known
    assert psnr(target, clean_out) > psnr(target, repaired) and psnr(target, clean_out) > 25


def test_restorer_training_resumes_bit_exactly(digits16, tmp_path):
    x = digits16[0][:200]
    cfg = RestoreTrainConfig(steps=8, width=8, batch_size=16, checkpoint_every=3)
    whole, _ = train_restorer(x, "combo:0.3", cfg, CPU)
    ckpt = tmp_path / "r.pt"
    _, part = train_restorer(x, "combo:0.3", cfg, CPU, ckpt_path=ckpt, stop_after=5)
    assert part["stopped"] and ckpt.is_file()
    resumed, s = train_restorer(x, "combo:0.3", cfg, CPU, ckpt_path=ckpt)
    assert s["resumed_from"] == 3 and not ckpt.exists()
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_meta_learned_restorer_start_resumes_bit_exactly_and_differs_from_its_init(digits16, tmp_path):
    x, y = digits16[0][:300], digits16[1][:300]
    cfg = RestoreTrainConfig(steps=1, width=8, batch_size=8, checkpoint_every=2)
    args = ("occlusion:0.3", cfg, 5, 2, 0.5, 16, CPU)
    whole, s = meta_restorer(x, y, *args)
    assert s["init"] == "meta" and s["episodes"] == 5
    torch.manual_seed(cfg.seed)
    fresh = UNet(RestorerConfig(1, 16, 8))
    assert any(not torch.equal(a, b) for a, b in zip(whole.state_dict().values(), fresh.state_dict().values()))
    ckpt = tmp_path / "meta.pt"
    _, part = meta_restorer(x, y, *args, ckpt_path=ckpt, stop_after=3)
    assert part["stopped"] and ckpt.is_file()
    resumed, s2 = meta_restorer(x, y, *args, ckpt_path=ckpt)
    assert s2["resumed_from"] == 2 and not ckpt.exists()
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


# --- image metrics ----------------------------------------------------------------------------------

def test_psnr_of_an_image_with_itself_is_capped_and_drops_as_noise_grows(digits16):
    x = digits16[0][:100]
    assert psnr(x, x) == PSNR_CAP and ssim(x, x) == pytest.approx(1.0)
    values = [psnr(x, corrupt(x, f"noise:{s}", seed=0)[0]) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    ssims = [ssim(x, corrupt(x, f"noise:{s}", seed=0)[0]) for s in (0.05, 0.2)]
    assert ssims[0] > ssims[1]


# --- the stage's core and the pipeline --------------------------------------------------------------

def test_the_stage_core_damages_repairs_and_judges(digits16, tmp_path):
    from stages.restore import restore
    x, y = digits16
    target = y >= 5
    names = [str(c) for c in range(5, 10)]
    shots = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(5, 10)])
    test_idx = np.setdiff1d(np.flatnonzero(target), shots)[:150]
    train, test = (ImageSet(x[i], y[i] - 5, names) for i in (shots, test_idx))
    source = ImageSet(x[~target], y[~target], [str(c) for c in range(5)])
    params = parse_params({"data": {"corrupt": "occlusion:0.3", "corrupt_on": "both"},
                           "restore": {"enabled": True, "width": 8, "steps": 10, "adapt_steps": 3, "batch_size": 16},
                           "finetune": {"steps": 5, "batch_size": 8}, "classifier": {"width": 8, "steps": 5}})
    clf = tmp_path / "classifier.pt"
    cfg = ClassifierConfig("convnet", 5, 1, 16, 8)  # an untrained backbone is enough to run the judging
    torch.manual_seed(0)
    save_classifier(clf, build_classifier(cfg), cfg, source.class_names, {})
    r = restore(train, test, source, params, clf, CPU, tmp_path / "ckpt")
    m = r.metrics
    assert m["feeds_pipeline"] == "learned" and set(m["downstream"]) == {"none", "classical", "learned"}
    assert set(m["quality"]) == {"none", "classical", "learned"} and m["quality_on"] == "target_test"
    assert m["quality"]["classical"]["psnr"] > m["quality"]["none"]["psnr"]
    assert "vs_none_macro_f1" in m["downstream"]["learned"] and m["verdict"]
    for name, clean in (("target_train", train), ("target_test", test)):
        out = r.sets[name]
        assert np.array_equal(out.y, clean.y) and out.class_names == names and not np.array_equal(out.x, clean.x)
    assert list(r.rows) == ["clean", "damaged", "classical", "learned"]
    assert "state_dict" in r.restorer and r.restorer["summary"]["adapt"]["adversarial"] is False
    meta = parse_params({**params.model_dump(), "restore": {**params.restore.model_dump(), "init": "meta",
                                                             "meta_episodes": 3, "meta_inner_steps": 2}})
    rm = restore(train, test, source, meta, clf, CPU, tmp_path / "ckpt").metrics
    assert rm["learned"]["source"]["init"] == "meta" and set(rm["downstream"]) == {"none", "classical", "learned"}


def test_restoration_off_leaves_the_pipeline_inputs_byte_for_byte(tiny_repro):
    project = tiny_repro.project
    for name in ("target_train.npz", "target_test.npz"):
        assert filecmp.cmp(project / "data/prepared" / name, project / "data/restored" / name, shallow=False)
    assert "placeholder" in torch.load(project / "models/restorer.pt", weights_only=True)
    assert json.loads((project / "metrics/restore.json").read_text())["enabled"] is False
