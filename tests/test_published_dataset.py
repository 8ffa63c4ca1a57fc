"""The published dataset: soft labels, the hard-label view, safe class folders whatever the names, labels every reader agrees on,
the Hugging Face metadata, the manifest dataset class and the datasheet."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from ganaug.config.errors import DataError
from ganaug.config.params import PublishParams, load_params
from ganaug.io.data import ImageSet, LoadOptions, load_digits_set, load_npz_set
from ganaug.io.datasheet import build_datasheet, render_datasheet
from ganaug.io.imagefolder import HF_METADATA, MANIFEST, class_folders, read_manifest, write_pngs
from ganaug.io.manifest_dataset import ManifestDataset
from ganaug.io.pictures import plot_samples
from ganaug.io.stream_labels import read_stream_labels, stream_frame, write_stream_labels
from ganaug.judge.metrics import save_confusion_png
from ganaug.published import load
from stages.concat import concat

ROOT = Path(__file__).resolve().parents[1]

# names that sort differently from their label order
FASHION = ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NUMBERS = ["8", "9", "10"]


def hostile_names(tmp: Path) -> list[str]:
    """Every kind of class name that could steer a write, hide a folder or break a reader."""
    return [
        str(tmp / "absolute_target"), "../../../escape", "..", ".", "a/b", "a\\b", "", " ", ".hidden",
        "x" * 5000, "nul\x00byte", "new\nline", "tab\there", "$\\undefinedmacro$", "a$b$c", "|pipe|", "*?<>:\"",
        "~", "$HOME", "con", "\u00e9migr\u00e9", "e\u0301migre\u0301", "漢字", "🙂", "-rf", "--help", "/", "//", "a/../../b",
    ]


def test_class_folders_are_single_safe_unique_components_in_label_order(tmp_path):
    names = hostile_names(tmp_path)
    folders = class_folders(names)
    assert len(set(folders)) == len(names)  # unique, though several names reduce to the same slug
    assert sorted(folders) == folders  # sorting by folder name gives label order
    for k, f in enumerate(folders):
        assert f.startswith(f"{k:02d}_") and len(f) <= 3 + 48, f
        assert f.isascii() and all(c.isalnum() or c in "_-" for c in f), f
        assert Path(f).name == f and not f.startswith(".")


@pytest.mark.parametrize("names", [FASHION, NUMBERS, [str(k) for k in range(12)]])
def test_folder_order_is_label_order_for_names_that_sort_otherwise(names):
    folders = class_folders(names)
    assert sorted(folders) == folders and sorted(names) != names


def test_duplicate_class_names_are_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"classes 0 and 2 have the same name 'a'"):
        class_folders(["a", "b", "a"])
    path = tmp_path / "dup.npz"
    np.savez(path, x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 2, 0]), class_names=np.array(["1", "2", "1"]))
    with pytest.raises(DataError, match=r"dup.npz: class_names: classes 0 and 2 have the same name '1'"):
        load_npz_set(path, LoadOptions(8, 1))


def _synthetic_dir(root: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> Path:
    paths = write_pngs(root, x, y, names, stem="syn")
    pd.DataFrame({"path": paths, "label": y, "class_name": [names[k] for k in y], "origin": "synthetic",
                  "generator_sha256": "f" * 64, "seed": 7}).to_parquet(root / MANIFEST)
    return root


def _stream_dir(root: Path, syn_paths: list[str], asked: np.ndarray, n_source: int, k: int) -> Path:
    """Stream labels as distill writes them: each synthetic image 0.9 on its asked class, source rows uniform."""
    probs = np.full((len(syn_paths) + n_source, k), 1.0 / k)
    probs[: len(syn_paths)] = 0.1 / max(k - 1, 1)
    probs[np.arange(len(syn_paths)), asked] = 0.9
    df = stream_frame(["synthetic"] * len(syn_paths) + ["source"] * n_source,
                      list(syn_paths) + [str(i) for i in range(n_source)], np.r_[asked, -np.ones(n_source, int)], probs)
    root.mkdir(parents=True, exist_ok=True)
    write_stream_labels(root, df, {"temperature": 2.0, "variants": ["baseline", "classical"], "seeds": [0],
                                   "mean_of": [{"file": "models/finetune/baseline.pt", "variant": "baseline",
                                                "seed": 0, "sha256": "0" * 64}]})
    return root


# every synthetic image in its class folder, so the hard-label readers see real and synthetic rows
ALL_SYNTHETIC = PublishParams(hard_view="confident", min_confidence=0.5, max_per_shot=10)


def _published(tmp_path: Path, names: list[str], evaluation: dict | None = None,
               publish: PublishParams = ALL_SYNTHETIC) -> tuple[Path, pd.DataFrame]:
    """`concat` of 2 real + 1 synthetic image per class and 3 source images, from a working folder two levels
    below tmp_path."""
    d = load_digits_set(LoadOptions(8, 1))
    k = len(names)
    real = ImageSet(d.x[: 2 * k], np.repeat(np.arange(k), 2), list(names))
    source = ImageSet(d.x[-3:], np.zeros(3, np.int64), ["other"])
    work = tmp_path / "project" / "data"
    work.mkdir(parents=True, exist_ok=True)
    syn = _synthetic_dir(work / "synthetic", d.x[2 * k : 3 * k], np.arange(k), list(names))
    stream = _stream_dir(work / "streams" / "gan_source", read_manifest(syn)["path"].tolist(), np.arange(k), 3, k)
    out = work / "augmented"
    df = concat(real, syn, stream, out, source=source, publish=publish,
                made_by={"git_revision": None, "params": {}, "inputs": {}}, evaluation=evaluation)
    return out, df


def test_hostile_class_names_write_nothing_outside_and_only_direct_class_folders(tmp_path):
    names = hostile_names(tmp_path)
    (tmp_path / "project" / "data").mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    out, df = _published(tmp_path, names)
    written = set(tmp_path.rglob("*")) - before
    assert all(p.is_relative_to(tmp_path / "project" / "data") for p in written), sorted(written)[:5]
    assert not (tmp_path / "absolute_target").exists() and not list(tmp_path.rglob("escape*"))
    for root in (out, out.parent / "synthetic"):
        dirs = [p for p in root.rglob("*") if p.is_dir()]  # (data/streams holds no image)
        assert sorted(p.name for p in dirs) == class_folders(names)  # one folder per class, no nesting
        assert all(p.parent == root for p in dirs)
    assert df["class_name"].dropna().drop_duplicates().tolist() == names  # the original names, kept in the manifest
    sheet = json.loads((out / "datasheet.json").read_text())
    assert [c["name"] for c in sheet["contents"]["classes"]] == names
    md = (out / "datasheet.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "`" in line]
    assert len(table) == len(names) and all(line.count(" | ") == 6 for line in table)  # names cannot break the table


@pytest.mark.parametrize("names", [FASHION, NUMBERS])
def test_imagefolder_manifest_dataset_and_manifest_agree_on_every_label(tmp_path, names):
    out, df = _published(tmp_path, names)
    view = df[df["hard_view"]]
    folder = ImageFolder(str(out))
    by_path = dict(zip(view["path"], view["label"]))
    assert len(folder) == len(view) == len(df) - 3  # every row but the source images
    for path, target in folder.samples:
        assert by_path[str(Path(path).relative_to(out))] == target
    ds = ManifestDataset(out)
    assert ds.classes == names and len(ds) == len(view)
    assert [ds[i][1] for i in range(len(ds))] == view["label"].tolist()
    syn = ManifestDataset(out, origin="synthetic")
    assert syn.targets == list(range(len(names))) and set(syn.frame["origin"]) == {"synthetic"}
    meta = pd.read_json(out / HF_METADATA, lines=True)
    assert meta["file_name"].tolist() == df["path"].tolist()
    assert meta["label"].tolist()[: len(view)] == view["label"].tolist() and meta["label"][len(view):].isna().all()


def test_the_shipped_hard_view_holds_the_real_shots_and_every_other_image_lies_outside_the_class_folders(tmp_path):
    out, df = _published(tmp_path, FASHION, publish=load_params(ROOT / "params.yaml").publish)
    assert set(df.loc[df["hard_view"], "origin"]) == {"real"} and (~df["hard_view"]).sum() == 5 + 3
    folder = ImageFolder(str(out))
    assert sorted(str(Path(p).relative_to(out)) for p, _ in folder.samples) == sorted(df.loc[df.hard_view, "path"])
    for rel in df.loc[~df["hard_view"], "path"]:
        assert "/" not in rel and (out / rel).is_file()  # at the top level: no reader takes it for a class member
    assert df.loc[~df["hard_view"], ["label", "class_name"]].isna().all().all()


def test_published_load_gives_images_with_the_probabilities_fine_tuning_used(tmp_path):
    out, df = _published(tmp_path, FASHION)
    stream, _ = read_stream_labels(tmp_path / "project/data/streams/gan_source")
    ds = load(out)
    assert len(ds) == len(df) and ds.classes == FASHION and ds.temperature == 2.0
    img, probs, origin = ds[len(df) - 1]
    assert origin == "source" and img.shape == (1, 8, 8) and img.dtype == torch.float32 and 0 <= img.min() <= img.max() <= 1
    assert torch.equal(ds.probs[10:], torch.from_numpy(stream.attrs["probs"]))  # as distill wrote them
    assert torch.equal(ds.probs[:10], torch.eye(5)[torch.tensor(df["label"][:10].to_numpy(np.int64))])  # one-hot
    assert len(load(out, origin="real")) == 10 and set(load(out, origin="source").origins) == {"source"}
    assert load(out, origin=("synthetic", "source")).origins == ["synthetic"] * 5 + ["source"] * 3
    with pytest.raises(DataError, match=r"origin must be one or more of"):
        load(out, origin="fake")


def test_manifest_dataset_refuses_an_unknown_origin(tmp_path):
    out, _ = _published(tmp_path, ["a", "b"])
    with pytest.raises(DataError, match=r"origin must be one of"):
        ManifestDataset(out, origin="fake")


def test_hugging_face_imagefolder_gives_the_manifest_labels_and_origin(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out, df = _published(tmp_path, FASHION)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(df) and sorted(ds["origin"]) == sorted(df["origin"])
    def key(o, p, lab, h):
        return o, tuple(np.round(np.asarray(p, np.float64), 5)), None if pd.isna(lab) else int(lab), bool(h)
    got = sorted(map(key, ds["origin"], ds["probs"], ds["label"], ds["hard_view"]))
    assert got == sorted(map(key, df["origin"], df["probs"], df["label"], df["hard_view"]))
    assert ds[0]["image"].size == (8, 8)


def _eval_json(delta_lo: float) -> dict:
    d = {"accuracy": {"delta": 0.01, "ci95_low": delta_lo, "ci95_high": 0.05},
         "macro_f1": {"delta": 0.01, "ci95_low": delta_lo, "ci95_high": 0.05}}
    return {"baseline": {"accuracy": 0.9, "macro_f1": 0.9}, "gan": {"accuracy": 0.91, "macro_f1": 0.91},
            "vs_baseline": {"gan": d}, "n_test": 100, "recommendation": "Recommendation: keep baseline (x)."}


def test_datasheet_counts_classes_and_origins_and_carries_the_verdict(tmp_path):
    out, df = _published(tmp_path, FASHION, _eval_json(-0.02))
    sheet = json.loads((out / "datasheet.json").read_text())
    assert (sheet["contents"]["real"], sheet["contents"]["synthetic"], sheet["contents"]["source"]) == (10, 5, 3)
    assert [(c["real"], c["synthetic"]) for c in sheet["contents"]["classes"]] == [(2, 1)] * 5
    assert sheet["made_by"]["teacher"]["temperature"] == 2.0 and sheet["files"]["manifest_schema"] == "ganaug-manifest/2"
    assert sheet["made_by"]["generator_sha256"] == "f" * 64 and sheet["made_by"]["synthesis_seed"] == 7
    ev = sheet["judged"]["evaluation"]
    assert ev["verdicts"] == ["gan did not clearly help: macro-F1 +0.010 against baseline, 95% CI -0.020 to +0.050 includes 0."]
    md = (out / "datasheet.md").read_text()
    assert "did not clearly help" in md and "Recommendation: keep baseline" in md
    assert render_datasheet(build_datasheet(df, FASHION, class_folders(FASHION), {}, None, None, None)).count("Not evaluated")


def test_pictures_draw_class_names_as_text_not_mathtext(tmp_path):
    names = ["$\\undefinedmacro$", "a$b$c", "x" * 300]
    x, y = np.zeros((3, 1, 8, 8), np.uint8), np.arange(3)
    plot_samples(x, y, names, "$\\frac$ title", tmp_path / "s.png")
    save_confusion_png(np.eye(3, dtype=int), names, tmp_path / "c.png", "t")
    for f in ("s.png", "c.png"):
        with Image.open(tmp_path / f) as img:
            assert img.format == "PNG"


def test_no_temporary_is_left_and_a_rewrite_replaces_every_file(tmp_path):
    out, _ = _published(tmp_path, ["a", "b"])
    first = {str(p.relative_to(out)) for p in out.rglob("*")}
    out2, _ = _published(tmp_path, ["c", "d"])
    assert out2 == out
    second = {str(p.relative_to(out)) for p in out.rglob("*")}
    # no image of the old version's class folders survives (top-level files are named by their source row)
    assert not first & {p for p in second if p.endswith(".png") and "/" in p}
    assert not [p for p in os.listdir(out.parent) if p.startswith(".augmented")]


def test_the_loading_code_and_the_consumer_recipe_of_docs_downstream_run_as_written(tmp_path, monkeypatch):
    """Every python block of docs/downstream.md, run in a folder holding a published `augmented` (the recipe's
    300 steps cut to 3): what a downstream team copies works."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out, df = _published(tmp_path, FASHION, publish=load_params(ROOT / "params.yaml").publish)
    monkeypatch.chdir(out.parent)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/downstream.md").read_text(), re.S)
    assert len(blocks) >= 3 and "range(300)" in blocks[-1]
    for code in blocks:
        scope: dict = {}
        exec(compile(code.replace("range(300)", "range(3)"), "docs/downstream.md", "exec"), scope)
        if "folders" in scope:
            assert len(scope["folders"]) == len(scope["hf_hard"]) == int(df["hard_view"].sum())
        if "probs" in scope:
            assert scope["x"].shape[0] == len(df) and scope["probs"].shape == (len(df), len(FASHION))
        if "model" in scope:
            assert torch.isfinite(scope["loss"]) and scope["T"] == 2.0
