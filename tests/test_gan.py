"""The GAN modules, DiffAugment and the train_gan stage (real torch, tiny data, CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ganaug.config.errors import UserError
from ganaug.config.params import GanParams
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, save_prepared, select_classes, to_float
from ganaug.nets.diffaug import AUGMENTS, diff_augment
from ganaug.nets.gan import (
    ARCHS, GanConfig, Generator, build_discriminator, build_generator, d_hinge_loss, g_hinge_loss, sample,
)
from ganaug.nets.generators import load_sampler
from ganaug.nets.sampling import SampleOptions
from ganaug.train.gan import BalancedBatches, GanTrainConfig, GanTrainer, fingerprint, load_source_gan, train_gan
from stages.pretrain_gan import PLACEHOLDER, pretrain_gan
from stages.train_gan import main

CPU = torch.device("cpu")
TINY = dict(z_dim=8, g_width=8, d_width=8, batch_size=6, ema_start=3, ema_decay=0.9)


def tiny_digits(n_classes: int = 3, per_class: int = 8, size: int = 16, channels: int = 1) -> ImageSet:
    """`per_class` real digits of classes 0..n_classes-1, as the prepare stage would hand them over."""
    ds = select_classes(load_digits_set(LoadOptions(size, channels)), list(range(n_classes)))
    idx = np.concatenate([np.flatnonzero(ds.y == k)[:per_class] for k in range(n_classes)])
    return ds.subset(idx)


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return tiny_digits()


def load_generator(path: Path, which: str = "ema") -> torch.nn.Module:
    """G's `which` weights of a gan.pt, loaded as synthesis loads them."""
    return load_sampler(path, SampleOptions(weights=which), expect="gan").draw.net


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- model shapes

@pytest.mark.parametrize("arch", ["dcgan", "resize"])
@pytest.mark.parametrize("size,channels", [(16, 1), (16, 3), (28, 1), (28, 3)])
def test_generator_and_discriminator_shapes(size, channels, arch):
    torch.manual_seed(0)
    cfg = GanConfig(n_classes=3, image_size=size, channels=channels, z_dim=8, g_width=8, d_width=8, arch=arch)
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    g_net, d_net = build_generator(cfg), build_discriminator(cfg)
    assert (type(g_net), type(d_net)) == ARCHS[arch]
    x = g_net(z, y)
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    logits = d_net(x, y)
    assert logits.shape == (5,)
    assert torch.isfinite(logits).all()


def test_config_rejects_size_not_multiple_of_4():
    with pytest.raises(ValueError, match="multiple of 4"):
        GanConfig(n_classes=2, image_size=18, channels=1)


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    assert d_hinge_loss(real, fake).item() == pytest.approx(0.5 + 0.5)
    assert g_hinge_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_sample_does_not_depend_on_batch_size():
    torch.manual_seed(0)
    net = Generator(GanConfig(n_classes=3, image_size=16, channels=1, z_dim=8, g_width=8)).train()
    labels = torch.arange(3).repeat_interleave(4)
    a = sample(net, labels, 8, torch.Generator().manual_seed(1), CPU, batch_size=5)
    b = sample(net, labels, 8, torch.Generator().manual_seed(1), CPU, batch_size=100)
    assert a.shape == (12, 1, 16, 16)
    torch.testing.assert_close(a, b)
    assert net.training  # sample() restores the mode it found


# ---------------------------------------------------------------- DiffAugment

@pytest.mark.parametrize("channels", [1, 3])
def test_diff_augment_is_deterministic_given_the_generator(channels):
    x = torch.rand(4, channels, 16, 16) * 2 - 1
    policy = "color,translation,cutout"
    a = diff_augment(x, policy, torch.Generator().manual_seed(3))
    b = diff_augment(x, policy, torch.Generator().manual_seed(3))
    c = diff_augment(x, policy, torch.Generator().manual_seed(4))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(diff_augment(x, "", torch.Generator()), x)


@pytest.mark.parametrize("policy", list(AUGMENTS) + ["color,translation,cutout"])
def test_diff_augment_is_differentiable(policy):
    x = (torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_()
    fn = lambda t: diff_augment(t, policy, torch.Generator().manual_seed(0))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


def test_diff_augment_rejects_unknown_op():
    with pytest.raises(ValueError, match="unknown DiffAugment op"):
        diff_augment(torch.zeros(1, 1, 8, 8), "color,blur", torch.Generator())


# ---------------------------------------------------------------- training

def test_tiny_training_run_writes_a_loadable_model(digits, tmp_path):
    p = GanParams(steps=30, checkpoint_every=10, **TINY)
    s = train_gan(digits, p, tmp_path / "gan.pt", tmp_path / "ckpt", CPU, str(tmp_path / "live"))
    assert s["steps"] == 30 and s["resumed_from"] == 0
    assert all(np.isfinite(s[k]) for k in ("loss_d", "loss_g", "d_real", "d_fake"))
    assert list((tmp_path / "ckpt").iterdir()) == []  # deleted on success
    ckpt = torch.load(tmp_path / "gan.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 30 and ckpt["class_names"] == digits.class_names
    assert ckpt["config"] == dict(n_classes=3, image_size=16, channels=1, z_dim=8, g_width=8, d_width=8, arch="resize")
    assert GanParams(**ckpt["params"]) == p
    assert not state_dicts_equal(ckpt["generator"], ckpt["generator_ema"])
    ema, raw = load_generator(tmp_path / "gan.pt", "ema"), load_generator(tmp_path / "gan.pt", "raw")
    assert state_dicts_equal(ema.state_dict(), ckpt["generator_ema"]) and not ema.training
    assert state_dicts_equal(raw.state_dict(), ckpt["generator"])
    curve = (tmp_path / "live/plots/metrics/loss_d.tsv").read_text().split()
    assert curve[:2] == ["step", "loss_d"] and curve[2::2] == ["10", "20", "30"]


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(digits, tmp_path):
    p = GanParams(steps=20, checkpoint_every=6, **TINY)
    train_gan(digits, p, tmp_path / "a.pt", tmp_path / "ckpt_a", CPU)
    # "Killed" at step 10: the checkpoint of step 6 stays, steps 7..10 are lost and redone.
    s = train_gan(digits, p, tmp_path / "b.pt", tmp_path / "ckpt_b", CPU, stop_after=10)
    assert s.get("stopped") and not (tmp_path / "b.pt").exists()
    assert [f.name for f in (tmp_path / "ckpt_b").iterdir()] == [f"{fingerprint(digits, p, CPU)}.pt"]
    torch.manual_seed(1234)  # a restarted process has a different global RNG; the checkpoint restores it
    s = train_gan(digits, p, tmp_path / "b.pt", tmp_path / "ckpt_b", CPU)
    assert s["resumed_from"] == 6 and s["steps"] == 20
    assert list((tmp_path / "ckpt_b").iterdir()) == []
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    for key in ("generator", "generator_ema", "discriminator"):
        assert state_dicts_equal(a[key], b[key]), key


def test_checkpoint_of_another_config_is_not_resumed(digits, tmp_path):
    p = GanParams(steps=12, checkpoint_every=6, **TINY)
    train_gan(digits, p, tmp_path / "gan.pt", tmp_path / "ckpt", CPU, stop_after=8)
    changed = p.model_copy(update={"lr_g": 1e-3})
    s = train_gan(digits, changed, tmp_path / "gan.pt", tmp_path / "ckpt", CPU)
    assert s["resumed_from"] == 0
    other_pixels = ImageSet(digits.x.copy(), digits.y, digits.class_names)
    other_pixels.x[0, 0, 0, 0] ^= 1
    assert len({fingerprint(digits, p, CPU), fingerprint(digits, changed, CPU), fingerprint(other_pixels, p, CPU)}) == 3
    assert fingerprint(digits, p, CPU) == fingerprint(digits, p.model_copy(update={"checkpoint_every": 7}), CPU)


class Payload:
    """Unpickling this runs code (creates a file): what weights_only=True must refuse to do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_unreadable_or_malicious_checkpoint_is_ignored(digits, tmp_path, capsys):
    p = GanParams(steps=4, checkpoint_every=2, **TINY)
    ckpt = tmp_path / "ckpt" / f"{fingerprint(digits, p, CPU)}.pt"
    ckpt.parent.mkdir()
    torch.save({"fingerprint": fingerprint(digits, p, CPU), "step": 2, "g": Payload(tmp_path / "pwned")}, ckpt)
    s = train_gan(digits, p, tmp_path / "gan.pt", ckpt.parent, CPU)
    assert s["resumed_from"] == 0 and not (tmp_path / "pwned").exists()
    assert "ignoring unreadable checkpoint" in capsys.readouterr().out
    assert not ckpt.exists()


def test_train_gan_refuses_a_class_without_images(digits, tmp_path):
    ds = ImageSet(digits.x, digits.y, digits.class_names + ["empty"])
    with pytest.raises(UserError, match="empty"):
        train_gan(ds, GanParams(steps=2, **TINY), tmp_path / "gan.pt", tmp_path / "ckpt", CPU)


def test_load_generator_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="generator checkpoint not found"):
        load_generator(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a generator checkpoint"):
        load_generator(tmp_path / "junk.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a usable 'gan' generator checkpoint"):
        load_generator(tmp_path / "other.pt")


def test_main_reads_params_and_prepared_data(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANAUG_DEVICE", "cpu")
    Path("data/restored").mkdir(parents=True)
    save_prepared(Path("data/restored/target_train.npz"), digits)
    Path("params.yaml").write_text(yaml.safe_dump({"gan": dict(steps=12, checkpoint_every=5, **TINY)}))
    main()
    assert "train_gan: 12 steps" in capsys.readouterr().out
    assert load_sampler("models/gan.pt").class_names == digits.class_names
    assert Path("dvclive/train_gan/plots/metrics/loss_g.tsv").is_file()
    assert list(Path("checkpoints/train_gan").iterdir()) == []


# ---------------------------------------------------------------- transfer, freezing, schedules, averaging


@pytest.fixture(scope="module")
def source_gan(tmp_path_factory) -> Path:
    """A tiny source GAN: 4 other digit classes, 12 steps."""
    ds = select_classes(load_digits_set(LoadOptions(16, 1)), [5, 6, 7, 8])
    ds = ds.subset(np.concatenate([np.flatnonzero(ds.y == k)[:6] for k in range(4)]))
    root = tmp_path_factory.mktemp("source")
    s = pretrain_gan(ds, GanParams(init="source", source_steps=12, **TINY), root / "gan_source.pt", root / "ckpt", CPU)
    assert s["placeholder"] is False and s["steps"] == 12
    return root / "gan_source.pt"


def trainer_for(digits: ImageSet, source: Path | None, steps: int = 50, **kw) -> GanTrainer:
    p = GanParams(steps=steps, **{**TINY, **kw})
    cfg = GanConfig(3, 16, 1, p.z_dim, p.g_width, p.d_width)
    real = BalancedBatches(to_float(digits.x), torch.as_tensor(digits.y), 3)
    return GanTrainer(cfg, GanTrainConfig.from_params(p), real, CPU, load_source_gan(source) if source else None)


def snapshot(net: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_scratch_writes_a_placeholder_that_train_gan_refuses(digits, tmp_path):
    s = pretrain_gan(None, GanParams(**TINY), tmp_path / "gan_source.pt", tmp_path / "ckpt", CPU)
    assert s["placeholder"] and torch.load(tmp_path / "gan_source.pt", weights_only=True) == PLACEHOLDER
    with pytest.raises(UserError, match="holds no source GAN"):
        train_gan(digits, GanParams(steps=2, init="source", **TINY), tmp_path / "gan.pt", tmp_path / "ckpt", CPU,
                  source_path=tmp_path / "gan_source.pt")


def test_source_init_copies_shared_weights_and_reinitialises_the_class_embeddings(digits, source_gan):
    src = torch.load(source_gan, weights_only=True)
    t = trainer_for(digits, source_gan, init="source")
    g, d = t.g_net.state_dict(), t.d_net.state_dict()
    assert torch.equal(g["project.weight"], src["generator"]["project.weight"])
    assert torch.equal(d["convs.2.parametrizations.weight.original"], src["discriminator"]["convs.2.parametrizations.weight.original"])
    assert g["up1.norm.embed.weight"].shape[0] == 3 and src["generator"]["up1.norm.embed.weight"].shape[0] == 4
    scratch = trainer_for(digits, None)
    assert torch.equal(g["up1.norm.embed.weight"], scratch.g_net.state_dict()["up1.norm.embed.weight"])  # fresh init
    assert not torch.equal(g["project.weight"], scratch.g_net.state_dict()["project.weight"])


def test_freeze_d_lower_keeps_the_frozen_layers_fixed_while_the_rest_change(digits, source_gan):
    t = trainer_for(digits, source_gan, init="source", freeze="d_lower", freeze_d_blocks=2)
    d0, g0 = snapshot(t.d_net), snapshot(t.g_net)
    for _ in range(4):
        t.train_step()
    d1, g1 = snapshot(t.d_net), snapshot(t.g_net)
    frozen = [k for k in d0 if k.startswith(("convs.0.", "convs.1."))]
    assert len(frozen) == 8  # weight, bias, and the spectral norm's u and v of each of the 2 layers
    assert all(torch.equal(d0[k], d1[k]) for k in frozen)
    assert all(not torch.equal(d0[k], d1[k]) for k in d0 if k.endswith("original") and k not in frozen)
    assert not torch.equal(g0["project.weight"], g1["project.weight"])


def params_of(net: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def test_alternate_trains_only_d_then_only_g(digits):
    """Parameters of the resting net stay fixed (its BatchNorm statistics / power iteration still run)."""
    t = trainer_for(digits, None, freeze="alternate", alternate_steps=2)
    d0, g0 = params_of(t.d_net), params_of(t.g_net)
    stats = [set(t.train_step()) for _ in range(2)]  # D phase
    d1, g1 = params_of(t.d_net), params_of(t.g_net)
    assert stats == [{"loss_d", "d_real", "d_fake"}] * 2
    assert state_dicts_equal(g0, g1) and not state_dicts_equal(d0, d1)
    assert [set(t.train_step()) for _ in range(2)] == [{"loss_g"}] * 2  # G phase
    d2, g2 = params_of(t.d_net), params_of(t.g_net)
    assert state_dicts_equal(d1, d2) and not state_dicts_equal(g1, g2)


def test_exp_lr_schedule(digits):
    t = trainer_for(digits, None, lr_schedule="exp", lr_gamma=0.1)
    for _ in range(3):
        t.train_step()
    t.set_learning_rates()
    assert t.opt_g.param_groups[0]["lr"] == pytest.approx(t.tc.lr_g * np.exp(-0.3))
    assert t.opt_d.param_groups[0]["lr"] == pytest.approx(t.tc.lr_d * np.exp(-0.3))


def test_average_of_the_last_snapshots_is_exported_and_loadable(digits, tmp_path):
    p = GanParams(steps=9, average_last=3, average_every=2, checkpoint_every=4, **TINY)
    t = trainer_for(digits, None, steps=9, average_last=3, average_every=2)
    snaps = []
    for _ in range(9):
        t.train_step()
        if t.step in (5, 7, 9):
            snaps.append(snapshot(t.g_net)["project.weight"])
    mean = t.average.mean(t.g_net)
    assert torch.allclose(mean["project.weight"], torch.stack(snaps).mean(0))
    train_gan(digits, p, tmp_path / "gan.pt", tmp_path / "ckpt", CPU)
    avg, raw = load_generator(tmp_path / "gan.pt", "average"), load_generator(tmp_path / "gan.pt", "raw")
    assert not state_dicts_equal(avg.state_dict(), raw.state_dict())
    with pytest.raises(UserError, match="gan.average_last"):
        train_gan(digits, GanParams(steps=3, **TINY), tmp_path / "plain.pt", tmp_path / "ckpt", CPU)
        load_generator(tmp_path / "plain.pt", "average")


@pytest.mark.parametrize("extra", [dict(init="source", freeze="d_lower"), dict(freeze="alternate", alternate_steps=3,
                                   lr_schedule="exp", average_last=2, average_every=4), dict(precision="bf16")])
def test_resume_is_bit_identical_with_transfer_and_averaging(digits, source_gan, tmp_path, extra):
    p = GanParams(steps=12, checkpoint_every=5, **TINY, **extra)
    train_gan(digits, p, tmp_path / "a.pt", tmp_path / "ckpt_a", CPU, source_path=source_gan)
    train_gan(digits, p, tmp_path / "b.pt", tmp_path / "ckpt_b", CPU, stop_after=7, source_path=source_gan)
    torch.manual_seed(99)
    s = train_gan(digits, p, tmp_path / "b.pt", tmp_path / "ckpt_b", CPU, source_path=source_gan)
    assert s["resumed_from"] == 5
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "b.pt"))
    for key in ("generator", "generator_ema", "discriminator", "generator_average"):
        assert (key in a) == (key in b) and (key not in a or state_dicts_equal(a[key], b[key]))


def test_bf16_autocast_trains_fp32_weights_to_a_different_finite_result(digits):
    fp32, bf16 = trainer_for(digits, None, steps=6), trainer_for(digits, None, steps=6, precision="bf16")
    for t in (fp32, bf16):
        for _ in range(6):
            stats = t.train_step()
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in stats.values())
    for net in (bf16.g_net, bf16.d_net, bf16.g_ema):
        assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in net.parameters())
    assert not state_dicts_equal(fp32.g_net.state_dict(), bf16.g_net.state_dict())  # the convolutions ran in bf16


def test_dcgan_arch_trains_and_its_checkpoint_loads_as_dcgan(digits, tmp_path):
    p = GanParams(steps=3, arch="dcgan", **TINY)
    train_gan(digits, p, tmp_path / "gan.pt", tmp_path / "ckpt", CPU)
    net = load_generator(tmp_path / "gan.pt")
    assert net.cfg.arch == "dcgan" and isinstance(net, ARCHS["dcgan"][0])
    assert GanParams(freeze_d_blocks=4).arch == "resize"  # the default D has 4 conv layers
    with pytest.raises(ValueError, match="freeze_d_blocks=4: the dcgan discriminator has 3 conv layers"):
        GanParams(arch="dcgan", freeze_d_blocks=4)
