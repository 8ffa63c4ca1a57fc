"""The meta-learned GAN start (issue #12): Reptile's update, episodes, resumption, meta-validation's choice,
train_gan adapting with it. (`dvc exp run -S gan.init=meta` end to end: tests/test_exp_runs.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ganaug.config.errors import DataError
from ganaug.config.params import DataParams, GanParams, MetaParams, parse_params, ParamsError
from ganaug.io.data import ImageSet, load_digits_set, load_prepared
from ganaug.nets.gan import GanConfig, build_discriminator, build_generator
from ganaug.train.gan import CLASS_SPECIFIC, train_gan, with_meta_choice
from ganaug.train.meta_gan import (adapt, class_specific, draw_task, episode_shape, inner_config, meta_train,
                                   meta_validate, split_classes)
from ganaug.train.reptile import outer_step, reptile_update
from ganaug.train.runtime import seed_everything

CPU = torch.device("cpu")
TINY_GAN = GanParams(z_dim=8, g_width=8, d_width=8, batch_size=6, ema_start=1)
TINY_META = MetaParams(episodes=4, inner_steps=3, ways=2, shots=3, val_fraction=0.3, val_tasks=1,
                       lr_factors=[1.0, 2.0], gamma_grid=[0.0], steps_grid=[2, 4], checkpoint_every=2)


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    from ganaug.io.data import LoadOptions
    return load_digits_set(LoadOptions(16, 1))


def test_reptile_moves_shared_weights_by_eps_and_leaves_class_embeddings():
    meta = {"conv.weight": torch.zeros(3), "norm.embed.weight": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(1)}
    adapted = {"conv.weight": torch.ones(3), "norm.embed.weight": torch.ones(2), "bn.num_batches_tracked": torch.tensor(5)}
    reptile_update(meta, adapted, 0.25, skip=class_specific)
    assert torch.equal(meta["conv.weight"], torch.full((3,), 0.25))
    assert torch.equal(meta["norm.embed.weight"], torch.zeros(2)) and CLASS_SPECIFIC == "embed"
    assert int(meta["bn.num_batches_tracked"]) == 5
    assert [outer_step(ep, 4, 0.8) for ep in range(4)] == pytest.approx([0.8, 0.6, 0.4, 0.2])  # linear decay to 0


def test_episodes_are_seeded_and_keep_meta_validation_classes_apart(digits):
    train_c, val_c = split_classes(digits, TINY_META, ways=2)
    assert not set(train_c) & set(val_c) and len(train_c) + len(val_c) == 10 and len(val_c) == 3
    a = draw_task(digits, train_c, 2, 3, np.random.default_rng([0, 1]))
    b = draw_task(digits, train_c, 2, 3, np.random.default_rng([0, 1]))
    assert np.array_equal(a.shots.x, b.shots.x) and a.shots.class_names == b.shots.class_names
    assert sorted(a.shots.y.tolist()) == [0, 0, 0, 1, 1, 1] and set(a.shots.class_names) <= {str(c) for c in train_c}
    shot_rows = {bytes(r) for r in a.shots.x.reshape(6, -1)}
    assert not any(bytes(r) in shot_rows for r in a.rest.x.reshape(len(a.rest.x), -1))  # reference images apart
    capped = draw_task(digits, train_c, 2, 3, np.random.default_rng([0, 1]), max_rest=4)  # meta-validation's cap
    assert np.array_equal(capped.shots.x, a.shots.x) and np.bincount(capped.rest.y).tolist() == [4, 4]
    with pytest.raises(DataError, match="lower meta.ways"):
        split_classes(ImageSet(digits.x[:40], digits.y[:40] % 5, [str(k) for k in range(5)]), TINY_META, ways=3)


def _start_and_inner_loop(source: ImageSet, m: MetaParams) -> tuple[dict, dict]:
    """What meta_train starts from and what its first episode's inner loop reaches from there, rebuilt here
    from the building blocks (same seeds), independently of meta_train's outer loop."""
    train_c, _ = split_classes(source, m, m.ways)
    cfg = GanConfig(m.ways, source.x.shape[-1], source.x.shape[1], TINY_GAN.z_dim, TINY_GAN.g_width,
                    TINY_GAN.d_width, TINY_GAN.arch)
    seed_everything(m.seed)
    start = {"generator": build_generator(cfg).state_dict(), "discriminator": build_discriminator(cfg).state_dict()}
    start = {k: {n: t.clone() for n, t in v.items()} for k, v in start.items()}
    task = draw_task(source, train_c, m.ways, m.shots, np.random.default_rng([m.seed, 0])).shots
    trainer = adapt(start, task, cfg, inner_config(TINY_GAN, m.inner_steps, m.inner_lr, 0.0, m.seed * 1_000_003), CPU)
    return start, {"generator": trainer.g_net.state_dict(), "discriminator": trainer.d_net.state_dict()}


def test_outer_step_0_keeps_the_start_and_outer_step_1_after_one_episode_gives_the_inner_loop(digits):
    one = TINY_META.model_copy(update={"episodes": 1, "outer_lr": 1.0})
    start, inner = _start_and_inner_loop(digits, one)
    moved = meta_train(digits, TINY_GAN, one, 2, 3, CPU)
    frozen = meta_train(digits, TINY_GAN, TINY_META.model_copy(update={"outer_lr": 0.0}), 2, 3, CPU)  # params need > 0
    changed = 0
    for net in ("generator", "discriminator"):
        for k, v in start[net].items():
            if not v.is_floating_point():
                continue  # BatchNorm's step counter: copied, not a weight
            assert torch.equal(frozen[net][k], v), (net, k)  # step 0: the meta weights never move
            if class_specific(k):
                assert torch.equal(moved[net][k], v), (net, k)  # per-class weights are never meta-learned
            else:  # step 1: meta + 1 * (inner - meta), equal up to float rounding
                torch.testing.assert_close(moved[net][k], inner[net][k].cpu(), rtol=0, atol=1e-6)
                changed += not torch.equal(v, inner[net][k].cpu())
    assert changed > 10  # the inner loop did move the shared weights


def test_episodes_draw_only_source_classes_and_images(tmp_path):
    from stages.prepare import prepare
    prepare(DataParams(shots=3, image_size=16), tmp_path)  # the default split: digits 0-4 -> 5-9
    source, target = (load_prepared(tmp_path / f) for f in ("source.npz", "target_train.npz"))
    test = load_prepared(tmp_path / "target_test.npz")
    target_rows = {bytes(r) for s in (target, test) for r in s.x.reshape(len(s.x), -1)}
    train_c, _ = split_classes(source, TINY_META, 2)
    for ep in range(20):
        task = draw_task(source, train_c, 2, 3, np.random.default_rng([TINY_META.seed, ep]))
        for part in (task.shots, task.rest):
            assert not set(part.class_names) & set(target.class_names)
            assert not any(bytes(r) in target_rows for r in part.x.reshape(len(part.x), -1))


def test_episodes_take_as_many_target_classes_as_the_source_can_spare():
    data = DataParams(target_classes=[5, 6, 7, 8, 9], shots=4)
    m = MetaParams()  # ways and shots null: the target's, fitted to the source
    assert episode_shape(data, m, 155, 5) == (5, 4)  # omniglot: the target's shape
    assert episode_shape(data, m, 5, 5) == (2, 4)  # 5 source classes: 2 meta-train, 2+ held out, 2-way episodes
    assert episode_shape(data, m, 10, 10) == (5, 4)  # MNIST -> USPS (all 10 classes on both sides): 5-way
    for k in (2, 3, 5, 8, 12):
        ways, _ = episode_shape(data, m, k, 5)
        train_c, val_c = split_classes(ImageSet(np.zeros((k, 1, 2, 2), np.uint8), np.arange(k), [str(c) for c in range(k)]),
                                       m, ways)
        assert len(train_c) >= ways and len(val_c) >= ways  # the fitted shape always fits
    assert episode_shape(data, MetaParams(ways=3, shots=2), 5, 5) == (3, 2)  # set by hand: as asked


def test_meta_training_resumes_bit_exactly(digits, tmp_path):
    whole = meta_train(digits, TINY_GAN, TINY_META, 2, 3, CPU)
    ckpt = tmp_path / "meta.pt"
    part = meta_train(digits, TINY_GAN, TINY_META, 2, 3, CPU, ckpt_path=ckpt, stop_after=3)
    assert part["summary"]["stopped"] and ckpt.is_file()
    resumed = meta_train(digits, TINY_GAN, TINY_META, 2, 3, CPU, ckpt_path=ckpt)
    assert resumed["summary"]["resumed_from"] == 2 and not ckpt.exists()
    for net in ("generator", "discriminator"):
        for k, v in whole[net].items():
            assert torch.equal(v, resumed[net][k]), (net, k)


def test_meta_validation_chooses_from_its_grid_and_train_gan_adapts_with_the_choice(digits, tmp_path):
    start = meta_train(digits, TINY_GAN, TINY_META, 2, 3, CPU)
    val_classes = start.pop("val_classes")
    flat = lambda x: x.reshape(len(x), -1)[:, :32].numpy()  # noqa: E731 (a stand-in feature map)
    val = meta_validate(start, digits, val_classes, TINY_GAN, TINY_META, 2, 3, flat, CPU)
    assert len(val["grid"]) == 2 * 1 * 2 and val["chosen"] == min(val["grid"], key=lambda r: r["kid"])
    assert {r["steps"] for r in val["grid"]} == {2, 4} and {r["lr"] for r in val["grid"]} == {2e-4, 4e-4}
    blob = {**start, **val}
    torch.save(blob, tmp_path / "gan_meta.pt")
    target = ImageSet(digits.x[digits.y >= 8][:12], digits.y[digits.y >= 8][:12] - 8, ["8", "9"])
    p = TINY_GAN.model_copy(update={"init": "meta", "steps": 999})
    s = train_gan(target, p, tmp_path / "gan.pt", tmp_path / "ckpt", CPU, source_path=tmp_path / "gan_meta.pt")
    gan = torch.load(tmp_path / "gan.pt", weights_only=True)
    assert s["steps"] == val["chosen"]["steps"] and gan["params"]["lr_g"] == val["chosen"]["lr"]
    shared = "project.weight"
    assert not torch.equal(gan["generator"][shared], start["generator"][shared])  # adapted from the start
    with pytest.raises(Exception, match="no meta-validated choice"):
        with_meta_choice(p, {"generator": {}, "discriminator": {}})


def test_meta_params_validate():
    all_classes = parse_params({"gan": {"init": "meta"}, "data": {"source_classes": None, "target_classes": None}})
    assert all_classes.meta.ways is None  # the target's class count comes from data/prepared/classes.json
    assert parse_params({"gan": {"init": "meta", "freeze": "d_lower"}}).gan.freeze == "d_lower"
    with pytest.raises(ParamsError, match="meta.steps_grid"):
        parse_params({"meta": {"steps_grid": []}})
