"""The synthesize stage: PNG tree, manifest, sample grid, reproducibility (real torch, tiny GAN)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torchvision.datasets import ImageFolder

from ganaug.config.errors import UserError
from ganaug.config.params import GanParams, SynthParams
from ganaug.io.data import LoadOptions, load_digits_set, save_prepared, select_classes, to_float, to_uint8
from ganaug.io.imagefolder import MANIFEST, MANIFEST_COLUMNS, class_folders, read_manifest
from ganaug.judge.synth_filter import load_judge
from ganaug.nets.classifier import ClassifierConfig, build_classifier, save_classifier
from ganaug.nets.gan import GanConfig, build_generator, sample, truncated_noise
from ganaug.nets.generators import load_sampler
from ganaug.train.fit import FitConfig, fit
from ganaug.train.gan import train_gan
from ganaug.tools.synthesis import REPORT, synthesize
from stages.synthesize import main

CPU = torch.device("cpu")
CLASSES = ["0", "1", "2"]


def shots():
    """3 classes x 8 digits of 16x16: the GAN's and the judge's training set."""
    ds = select_classes(load_digits_set(LoadOptions(16, 1)), [0, 1, 2])
    return ds.subset(np.concatenate([np.flatnonzero(ds.y == k)[:8] for k in range(3)]))


@pytest.fixture(scope="module")
def gan_path(tmp_path_factory) -> Path:
    """A GAN trained for a few steps on `shots()`."""
    root = tmp_path_factory.mktemp("gan")
    p = GanParams(steps=10, z_dim=8, g_width=8, d_width=8, batch_size=6, ema_start=2, ema_decay=0.9)
    train_gan(shots(), p, root / "gan.pt", root / "ckpt", CPU)
    return root / "gan.pt"


@pytest.fixture(scope="module")
def judge_path(tmp_path_factory) -> Path:
    """A tiny classifier trained on `shots()` for 40 steps (stands in for models/finetune/baseline.pt)."""
    ds, root = shots(), tmp_path_factory.mktemp("judge")
    cfg = ClassifierConfig(n_classes=3, image_size=16, width=8)
    torch.manual_seed(0)
    model = build_classifier(cfg)
    fit(model, to_float(ds.x), torch.as_tensor(ds.y), FitConfig(steps=40, batch_size=12, lr=3e-3), CPU)
    save_classifier(root / "baseline.pt", model.cpu(), cfg, ds.class_names, {})
    return root / "baseline.pt"


def png_bytes(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.png"))}


def test_writes_an_image_folder_with_its_manifest(gan_path, tmp_path):
    out, png = tmp_path / "synthetic", tmp_path / "plots/samples.png"
    df = synthesize(gan_path, SynthParams(per_class=4, batch_size=5), out, png, CPU)
    assert len(png_bytes(out)) == 4 * 3
    on_disk = read_manifest(out)
    assert list(on_disk.columns) == MANIFEST_COLUMNS
    pd.testing.assert_frame_equal(on_disk, df)
    assert on_disk["label"].dtype == "int64" and on_disk["seed"].dtype == "int64"
    assert (on_disk["label"].to_numpy() == np.repeat([0, 1, 2], 4)).all()
    assert list(on_disk["class_name"]) == [CLASSES[k] for k in on_disk["label"]]
    assert set(on_disk["origin"]) == {"synthetic"} and set(on_disk["seed"]) == {0}
    assert set(on_disk["generator_sha256"]) == {hashlib.sha256(gan_path.read_bytes()).hexdigest()}
    assert all((out / rel).is_file() for rel in on_disk["path"])
    folder = ImageFolder(str(out))
    assert folder.classes == class_folders(CLASSES) and len(folder) == 12
    assert folder.targets == on_disk["label"].tolist()  # folder order is label order
    assert folder[0][0].size == (16, 16)
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 200


def test_same_seed_gives_identical_png_bytes(gan_path, tmp_path):
    runs = {}
    for name, p in {"a": SynthParams(per_class=3, seed=7), "b": SynthParams(per_class=3, seed=7, batch_size=2),
                    "c": SynthParams(per_class=3, seed=8)}.items():
        synthesize(gan_path, p, tmp_path / name, tmp_path / f"{name}.png", CPU)
        runs[name] = png_bytes(tmp_path / name)
    assert runs["a"] == runs["b"]  # batch_size does not change which image a row gets
    assert runs["a"].keys() == runs["c"].keys() and runs["a"] != runs["c"]


def test_per_class_zero_writes_an_empty_tree_with_a_manifest(gan_path, tmp_path):
    out, png = tmp_path / "synthetic", tmp_path / "samples.png"
    df = synthesize(gan_path, SynthParams(per_class=0), out, png, CPU)
    assert out.is_dir() and sorted(f.name for f in out.iterdir()) == [MANIFEST, REPORT]
    assert len(df) == 0 and list(read_manifest(out).columns) == MANIFEST_COLUMNS
    assert png.is_file()  # a preview grid, so the plot output still exists


def test_rerun_replaces_the_previous_tree(gan_path, tmp_path):
    out = tmp_path / "synthetic"
    synthesize(gan_path, SynthParams(per_class=5), out, tmp_path / "s.png", CPU)
    synthesize(gan_path, SynthParams(per_class=2), out, tmp_path / "s.png", CPU)
    assert len(png_bytes(out)) == 2 * 3 and len(read_manifest(out)) == 6


def test_main_reads_params_and_writes_the_stage_outputs(gan_path, judge_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANAUG_DEVICE", "cpu")
    Path("models/finetune").mkdir(parents=True)
    Path("data/restored").mkdir(parents=True)
    shutil.copyfile(gan_path, "models/gan.pt")
    shutil.copyfile(judge_path, "models/finetune/baseline.pt")
    save_prepared(Path("data/restored/target_train.npz"), shots())
    Path("params.yaml").write_text(yaml.safe_dump({"synth": {"per_class": 2, "seed": 3}}))
    main()
    assert "synthesize: 6 images" in capsys.readouterr().out
    assert len(read_manifest(Path("data/synthetic"))) == 6
    assert Path("plots/samples.png").is_file()
    report = json.loads(Path("data/synthetic/report.json").read_text())
    assert report["quota_met"] and report["memorisation"]["candidates_checked"] == 6


# ---------------------------------------------------------------- quotas, filter, copies

def kept_images(root: Path) -> tuple[np.ndarray, np.ndarray]:
    df = read_manifest(root)
    x = np.stack([np.asarray(Image.open(root / rel))[None] for rel in df["path"]]) if len(df) else None
    return x, df["label"].to_numpy()


def test_ratio_sets_the_quota_from_the_real_shots(gan_path, tmp_path):
    real = shots()
    real = real.subset(np.flatnonzero(real.y != 2)[:-3])  # 8, 5 and 0 shots
    df = synthesize(gan_path, SynthParams(per_class=None, ratio=1.5), tmp_path / "s", tmp_path / "s.png", CPU, real)
    assert df["label"].value_counts().to_dict() == {0: 12, 1: 8}


def test_truncation_changes_the_samples_and_keeps_them_deterministic(gan_path, tmp_path):
    for name, t in (("a", None), ("b", 0.5), ("c", 0.5)):
        synthesize(gan_path, SynthParams(per_class=3, truncation=t), tmp_path / name, tmp_path / f"{name}.png", CPU)
    assert png_bytes(tmp_path / "b") == png_bytes(tmp_path / "c") != png_bytes(tmp_path / "a")
    z = truncated_noise(500, 8, torch.Generator().manual_seed(0), 0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2


def test_confidence_filter_enforces_the_threshold_and_reports_the_shortfall(gan_path, judge_path, tmp_path):
    judge = load_judge(judge_path, shots(), 64, CPU)
    out = {}
    for name, t in (("easy", 0.0), ("hard", 0.5)):
        p = SynthParams(per_class=6, filter="confidence", min_confidence=t, max_factor=2)
        synthesize(gan_path, p, tmp_path / name, tmp_path / f"{name}.png", CPU, shots(), judge_path)
        out[name] = json.loads((tmp_path / name / REPORT).read_text())
    easy, hard = out["easy"], out["hard"]
    assert easy["quota_met"] and all(c["kept"] == 6 and c["drawn"] == 6 for c in easy["per_class"].values())
    x, y = kept_images(tmp_path / "hard")
    assert x is not None and len(x) < 18
    assert (judge.score(x, y)["conf"] >= 0.5).all()  # the tiny GAN's samples mostly fail the threshold
    for name, c in hard["per_class"].items():
        assert c["kept"] <= 6 and c["shortfall"] == 6 - c["kept"]
        assert c["drawn"] == 12 if c["shortfall"] else c["drawn"] <= 12  # generated more, up to the cap
    assert hard["shortfall"] == sum(c["shortfall"] for c in hard["per_class"].values()) > 0  # the cap was hit


def test_top_fraction_keeps_the_most_confident_of_the_candidates(gan_path, judge_path, tmp_path):
    p = SynthParams(per_class=4, filter="top_fraction", keep_fraction=0.25, max_factor=8)
    synthesize(gan_path, p, tmp_path / "s", tmp_path / "s.png", CPU, shots(), judge_path)
    report = json.loads((tmp_path / "s" / REPORT).read_text())
    assert all(c["drawn"] == 16 and c["kept"] == 4 for c in report["per_class"].values())
    judge = load_judge(judge_path, shots(), 64, CPU)
    labels = torch.arange(3).repeat_interleave(16)
    cand = load_sampler(gan_path)(labels, torch.Generator().manual_seed(0)).images
    conf = judge.score(cand, labels.numpy())["conf"]
    x, y = kept_images(tmp_path / "s")
    kept_conf = judge.score(x, y)["conf"]
    for k in range(3):
        assert np.allclose(np.sort(kept_conf[y == k]), np.sort(conf[labels.numpy() == k])[-4:])


def test_copies_of_real_shots_are_found_and_dropped(gan_path, judge_path, tmp_path):
    real = shots()
    judge = load_judge(judge_path, real, 64, CPU)
    s = judge.score(real.x, real.y)
    assert s["exact"].all() and np.allclose(s["nn_dist"], 0.0, atol=1e-3)
    p = SynthParams(per_class=2, min_nn_distance=1e9, max_factor=2)  # everything is "too close"
    df = synthesize(gan_path, p, tmp_path / "s", tmp_path / "s.png", CPU, real, judge_path)
    report = json.loads((tmp_path / "s" / REPORT).read_text())
    assert len(df) == 0 and report["shortfall"] == 6 and not report["quota_met"]
    memo = report["memorisation"]
    assert memo["candidates_checked"] == 12 and memo["near_copies_dropped"] == 12
    assert memo["fraction_below_threshold"] == 1.0 and memo["real_to_real_nn_distance_median"] > 0


def test_filter_without_a_judge_is_refused(gan_path, tmp_path):
    with pytest.raises(UserError, match="synth.filter=confidence"):
        synthesize(gan_path, SynthParams(per_class=2, filter="confidence"), tmp_path / "s", tmp_path / "s.png", CPU)


def test_synthesis_loads_the_ema_weights_by_default_and_they_differ_from_the_raw_ones(gan_path, tmp_path):
    ckpt = torch.load(gan_path, weights_only=True)
    assert any(not torch.equal(ckpt["generator"][k], ckpt["generator_ema"][k]) for k in ckpt["generator"])
    assert SynthParams().generator == "ema"
    written = {}
    for which in ("ema", "raw"):
        synthesize(gan_path, SynthParams(per_class=3, generator=which), tmp_path / which, tmp_path / f"{which}.png", CPU)
        written[which], _ = kept_images(tmp_path / which)
    net = build_generator(GanConfig(**ckpt["config"]))
    net.load_state_dict(ckpt["generator_ema"])
    labels, g = torch.arange(3).repeat_interleave(3), torch.Generator().manual_seed(0)
    expected = to_uint8(sample(net.eval(), labels, ckpt["config"]["z_dim"], g, CPU, 9))
    assert np.array_equal(written["ema"], expected) and not np.array_equal(written["raw"], expected)


def test_compare_samples_draws_the_gans_side_by_side(gan_path, tmp_path, capsys):
    from ganaug.tools.compare_samples import main as compare_main

    out = tmp_path / "cmp.png"
    compare_main([f"scratch={gan_path}", f"source={gan_path}", "-o", str(out), "--per-class", "4"])
    assert "scratch, source" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > img.height
    with pytest.raises(SystemExit):
        compare_main([str(gan_path)])
