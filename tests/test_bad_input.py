"""Bad input fails loudly and cleanly: one `error:` line naming the file or key, exit code 2, no output left.

Every input is built in a temporary directory at test time. Most cases run the
prepare stage's core function; a handful go through the real CLI
(`python -m stages.prepare` in a project folder with its own params.yaml) and
one through `dvc repro`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import ROOT, forked_python, make_project, pipeline_env, run, tool_env
from ganaug.config.errors import DataError
from ganaug.config.params import DataParams
from ganaug.io.data import ImageSet, LoadOptions, load_manifest_set, load_prepared, load_training_set
from ganaug.io.imagefolder import MANIFEST, read_image, write_pngs
from ganaug.io.stream_labels import stream_frame, write_stream_labels
from stages.concat import concat
from stages.prepare import prepare

SIZE = 8  # the smallest image_size the schema allows


# ---------------------------------------------------------------- building inputs

def png(path: Path, mode: str = "L", size: tuple[int, int] = (12, 10), value: int | None = None, seed: int = 0) -> Path:
    """Write an image of `mode` (L, RGB, RGBA, P, I;16, LA, 1) with random (or constant) pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        arr = np.full((h, w), value, np.uint16) if value is not None else rng.integers(0, 65536, (h, w), dtype=np.uint16)
        img = Image.fromarray(arr)  # 16-bit gray: opens as I;16
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 4, (h, w), dtype=np.uint8)).convert("P")
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0] * (252 * 3))
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        shape = (h, w) if bands == 1 else (h, w, bands)
        arr = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
    img.save(path)
    return path


def folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
    """An ImageFolder tree `<root>/<class>/<i>.png` of gray PNGs (a count of 0 makes an empty class folder)."""
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            png(root / cls / f"{i}.png", size=size, seed=100 * k + i)
    return root


def truncated_png(path: Path) -> Path:
    full = png(path, size=(32, 32)).read_bytes()
    path.write_bytes(full[: len(full) // 2])
    return path


def text_as_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def empty_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


BAD_FILES = {"truncated": truncated_png, "not an image": text_as_png, "zero bytes": empty_png}
BAD_FILE_MESSAGES = {"truncated": "not a readable image", "not an image": "not a readable image",
                     "zero bytes": r"empty file \(0 bytes\)"}


def target_params(target: Path | str, **kw) -> DataParams:
    """Domain transfer from the embedded digits to `target`; all of the target's classes, 1 shot."""
    base = dict(source="digits", target=str(target), target_classes=None, shots=1, image_size=SIZE)
    return DataParams(**{**base, **kw})


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    leftovers = list(out.parent.glob(f".{out.name}.*")) if out.parent.exists() else []
    assert not leftovers, f"temporaries left behind: {leftovers}"


# ---------------------------------------------------------------- the prepare core, case by case

def _missing(tmp: Path) -> tuple[DataParams, str]:
    return target_params(tmp / "nope"), r"nope: dataset not found"


def _no_class_folders(tmp: Path):
    (tmp / "ds").mkdir()
    png(tmp / "ds" / "loose.png")  # an image, but not inside a class folder
    return target_params(tmp / "ds"), r"ds: no class folders"


def _empty_class(tmp: Path):
    return target_params(folder(tmp / "ds", {"a": 3, "b": 0})), r"ds/b: class folder has no images"


def _one_class(tmp: Path):
    return target_params(folder(tmp / "ds", {"a": 3})), r"ds: only one class folder \('a'\)"


def _too_few_shots(tmp: Path):
    return (target_params(folder(tmp / "ds", {"a": 4, "b": 3}), shots=4),
            r"ds: class 'b' has 3 image\(s\), fewer than data.shots=4")


def _bad_file(kind: str):
    def build(tmp: Path):
        ds = folder(tmp / "ds", {"a": 3, "b": 3})
        BAD_FILES[kind](ds / "b" / "bad.png")
        return target_params(ds), rf"ds/b/bad.png: {BAD_FILE_MESSAGES[kind]}"
    return build


def _bad_file_in_test_split(tmp: Path):
    folder(tmp / "ds" / "train", {"a": 2, "b": 2})
    folder(tmp / "ds" / "test", {"a": 2, "b": 2})
    truncated_png(tmp / "ds" / "test" / "a" / "bad.png")
    return target_params(tmp / "ds"), r"ds/test/a/bad.png: not a readable image"


def _over_pixel_limit(tmp: Path):
    ds = folder(tmp / "ds", {"a": 3, "b": 3})
    png(ds / "a" / "big.png", size=(40, 30))
    return (target_params(ds, max_image_pixels=1000),
            r"ds/a/big.png: 40x30 image exceeds data.max_image_pixels=1000; refused")


def _npz(tmp: Path, **arrays) -> Path:
    np.savez(tmp / "set.npz", **arrays)
    return tmp / "set.npz"


X6 = np.zeros((6, 10, 10), np.uint8)


def _npz_without_x(tmp: Path):
    return target_params(_npz(tmp, images=X6, y=np.arange(6) % 2)), r"set.npz: missing array\(s\) \['x'\]"


def _npz_without_y(tmp: Path):
    return target_params(_npz(tmp, x=X6, labels=np.arange(6) % 2)), r"set.npz: missing array\(s\) \['y'\]"


def _npz_mismatched(tmp: Path):
    return target_params(_npz(tmp, x=X6, y=np.arange(5) % 2)), r"set.npz: x has 6 images but y has 5 labels"


def _npz_label_out_of_range(tmp: Path):
    p = _npz(tmp, x=X6, y=np.array([0, 1, 2, 0, 1, 2]), class_names=np.array(["cat", "dog"]))
    return target_params(p), r"set.npz: labels must lie in 0..1 \(2 classes\); found 0..2"


def _npz_negative_label(tmp: Path):
    return target_params(_npz(tmp, x=X6, y=np.array([0, 1, -1, 0, 1, 0]))), r"set.npz: labels must be class indices >= 0; found -1"


def _npz_not_pixels(tmp: Path):
    return target_params(_npz(tmp, x=X6.astype(np.float32) - 1, y=np.arange(6) % 2)), r"set.npz: x must hold pixels in 0..255"


def _npz_not_a_zip(tmp: Path):
    (tmp / "set.npz").write_bytes(b"PK\x03\x04 this is no zip archive")
    return target_params(tmp / "set.npz"), r"set.npz: not a readable .npz"


def _npz_with_pickled_objects(tmp: Path):
    x = np.empty(6, dtype=object)
    x[:] = [np.zeros((10, 10), np.uint8)] * 6
    return target_params(_npz(tmp, x=x, y=np.arange(6) % 2)), r"set.npz: not a readable .npz \(ValueError: Object arrays"


def _missing_target_test(tmp: Path):
    ds = folder(tmp / "ds", {"a": 3, "b": 3})
    return target_params(ds, target_test=str(tmp / "gone")), r"gone: dataset not found"


def _unknown_target_class(tmp: Path):
    ds = folder(tmp / "ds", {"a": 3, "b": 3})
    return target_params(ds, target_classes=["a", "zebra"]), r"data.target_classes: unknown class 'zebra'"


CORE_CASES = {
    "dataset missing": _missing,
    "no class folders": _no_class_folders,
    "empty class folder": _empty_class,
    "only one class": _one_class,
    "fewer images than shots": _too_few_shots,
    **{f"{kind} image": _bad_file(kind) for kind in BAD_FILES},
    "bad image in test split": _bad_file_in_test_split,
    "over the pixel limit": _over_pixel_limit,
    "npz without x": _npz_without_x,
    "npz without y": _npz_without_y,
    "npz x/y lengths differ": _npz_mismatched,
    "npz label outside classes": _npz_label_out_of_range,
    "npz negative label": _npz_negative_label,
    "npz x not pixels": _npz_not_pixels,
    "npz not an archive": _npz_not_a_zip,
    "npz with pickled objects": _npz_with_pickled_objects,
    "target_test missing": _missing_target_test,
    "unknown target class": _unknown_target_class,
}


@pytest.mark.parametrize("case", CORE_CASES, ids=list(CORE_CASES))
def test_prepare_refuses_bad_input_and_writes_nothing(tmp_path, case):
    params, message = CORE_CASES[case](tmp_path)
    out = tmp_path / "data" / "prepared"
    with pytest.raises(DataError, match=message) as info:
        prepare(params, out)
    assert "\n" not in str(info.value)
    assert_nothing_written(out)


def test_prepare_keeps_the_previous_output_when_a_rerun_fails(tmp_path):
    ds = folder(tmp_path / "ds", {"a": 3, "b": 3})
    out = tmp_path / "prepared"
    prepare(target_params(ds), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    truncated_png(ds / "a" / "late.png")
    with pytest.raises(DataError, match="late.png: not a readable image"):
        prepare(target_params(ds), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".prepared.*"))


# ---------------------------------------------------------------- on_bad_image: skip

def test_skip_lists_bad_files_of_both_splits_in_the_manifest(tmp_path):
    root = tmp_path / "ds"
    folder(root / "train", {"a": 3, "b": 3})
    folder(root / "test", {"a": 2, "b": 2})
    bad = [truncated_png(root / "train" / "a" / "t.png"), text_as_png(root / "train" / "b" / "x.png"),
           empty_png(root / "train" / "b" / "z.png"), truncated_png(root / "test" / "b" / "t.png")]
    m = prepare(target_params(root, on_bad_image="skip"), tmp_path / "prepared")
    assert m["skipped_files"] == sorted(str(p) for p in bad)
    assert json.loads((tmp_path / "prepared" / "manifest.json").read_text())["skipped_files"] == m["skipped_files"]
    assert m["counts"]["target_train"] == {"a": 1, "b": 1} and m["counts"]["target_test"] == {"a": 2, "b": 2}
    assert len(load_prepared(tmp_path / "prepared" / "target_test.npz")) == 4


def test_skip_still_refuses_a_class_with_no_readable_image(tmp_path):
    ds = folder(tmp_path / "ds", {"a": 3, "b": 0})
    truncated_png(ds / "b" / "only.png")
    with pytest.raises(DataError, match=r"ds/b: class folder has no readable images \(1 bad file\(s\) skipped"):
        prepare(target_params(ds, on_bad_image="skip"), tmp_path / "prepared")
    assert_nothing_written(tmp_path / "prepared")


# ---------------------------------------------------------------- mixed sizes and modes: converted

MODES = ["L", "RGB", "RGBA", "P", "I;16", "LA", "1"]


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_sizes_and_modes_are_converted(tmp_path, channels):
    ds = tmp_path / "ds"
    for i, mode in enumerate(MODES):
        for cls in ("a", "b"):
            png(ds / cls / f"{mode.replace(';', '_')}.png", mode, size=(9 + 7 * i, 30 - 3 * i), seed=i)
    m = prepare(target_params(ds, channels=channels, shots=3), tmp_path / "prepared")
    assert m["skipped_files"] == [] and m["counts"]["target_train"] == {"a": 3, "b": 3}
    for name in ("target_train.npz", "target_test.npz"):
        s = load_prepared(tmp_path / "prepared" / name)
        assert s.x.dtype == np.uint8 and s.x.shape[1:] == (channels, SIZE, SIZE)


@pytest.mark.parametrize("mode, value, channels, expected", [
    ("I;16", 65535, 1, [255]),  # 16-bit full scale -> 8-bit full scale
    ("I;16", 32896, 1, [128]),
    ("RGBA", 0, 3, [0, 0, 0]),  # fully transparent -> black
    ("P", None, 3, None),  # palette -> its RGB colours
    ("RGB", 200, 1, [200]),
    ("L", 90, 3, [90, 90, 90]),
])
def test_read_image_converts_modes(tmp_path, mode, value, channels, expected):
    path = png(tmp_path / "img.png", mode, size=(10, 6), value=value)
    arr = read_image(path, SIZE, channels, 10_000)
    assert arr.shape == (channels, SIZE, SIZE) and arr.dtype == np.uint8
    if mode == "P":  # every pixel is one of the palette's colours, blended only by the resize
        colours = {tuple(c) for c in np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)}
        assert colours <= {(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)} and len(colours) > 1
        assert arr.max() == 255
    else:
        assert (arr == np.asarray(expected, np.uint8).reshape(-1, 1, 1)).all()


def test_decompression_bomb_far_over_the_limit_is_refused_at_open(tmp_path):
    """Over twice the limit PIL itself refuses the file from its header, before decoding anything."""
    path = png(tmp_path / "bomb.png", size=(64, 64))
    with pytest.raises(DataError, match=r"bomb.png: refused as a decompression bomb \(over data.max_image_pixels=1000"):
        read_image(path, SIZE, 1, 1000)


def test_the_pixel_limit_is_data_max_image_pixels_not_pils_global_default(tmp_path):
    path = png(tmp_path / "ok.png", size=(64, 64))
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # as if PIL's default were below the user's limit
    try:
        assert read_image(path, SIZE, 1, 64 * 64).shape == (1, SIZE, SIZE)
        assert Image.MAX_IMAGE_PIXELS == 1000  # restored
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# ---------------------------------------------------------------- manifest paths must stay inside their root

def _manifest_root(tmp: Path, paths: list[str]) -> Path:
    """An ImageFolder tree whose manifest lists `paths` (two good rows first)."""
    root = tmp / "augmented"
    good = write_pngs(root, np.zeros((2, 1, SIZE, SIZE), np.uint8), np.array([0, 1]), ["a", "b"], stem="real")
    rows = good + paths
    labels = [0, 1] + [0] * len(paths)
    pd.DataFrame({"path": rows, "label": labels, "class_name": [["a", "b"][k] for k in labels],
                  "origin": "synthetic", "generator_sha256": "0" * 64, "seed": 0}).to_parquet(root / MANIFEST)
    return root


def _outside_file(tmp: Path) -> Path:
    return png(tmp / "outside.png", size=(SIZE, SIZE))


MANIFEST_CASES = {
    "dot-dot": (lambda tmp: "../outside.png", r"manifest path '../outside.png' leaves the dataset root"),
    "absolute": (lambda tmp: "/etc/passwd", r"manifest path '/etc/passwd' leaves the dataset root"),
    "absolute to an image": (lambda tmp: str(tmp / "outside.png"), r"outside.png' leaves the dataset root"),
    "nested dot-dot": (lambda tmp: "a/../../outside.png", r"manifest path 'a/../../outside.png' leaves the dataset root"),
    "symlink out": (lambda tmp: "0_a/link.png", r"manifest path '0_a/link.png' resolves outside the dataset root"),
}


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=list(MANIFEST_CASES))
def test_manifest_paths_that_leave_the_root_are_refused(tmp_path, case):
    _outside_file(tmp_path)
    rel, message = MANIFEST_CASES[case]
    root = _manifest_root(tmp_path, [rel(tmp_path)])
    os.symlink(tmp_path / "outside.png", root / "0_a" / "link.png")
    with pytest.raises(DataError, match=message):
        load_manifest_set(root, LoadOptions(SIZE, 1))
    with pytest.raises(DataError, match=message):  # the finetune stage's loader for data/augmented
        load_training_set([root], SIZE, 1)


def test_manifest_row_for_a_missing_file_names_it(tmp_path):
    root = _manifest_root(tmp_path, ["1_b/gone.png"])
    with pytest.raises(DataError, match=r"augmented/1_b/gone.png: cannot read image"):
        load_manifest_set(root, LoadOptions(SIZE, 1))


def test_a_good_manifest_with_a_symlink_inside_the_root_loads(tmp_path):
    root = _manifest_root(tmp_path, ["0_a/inside.png"])
    os.symlink(root / "1_b" / "real_000001.png", root / "0_a" / "inside.png")
    assert len(load_manifest_set(root, LoadOptions(SIZE, 1))) == 3


def test_concat_refuses_a_synthetic_manifest_leaving_its_root_and_writes_nothing(tmp_path):
    _outside_file(tmp_path)
    synthetic = _manifest_root(tmp_path, ["../outside.png"])
    real = ImageSet(np.zeros((2, 1, SIZE, SIZE), np.uint8), np.array([0, 1]), ["a", "b"])
    out = tmp_path / "data" / "augmented"
    stream = tmp_path / "data" / "streams" / "gan_source"
    stream.mkdir(parents=True)
    refs = pd.read_parquet(synthetic / "manifest.parquet")["path"].tolist()  # the stream names every row
    write_stream_labels(stream, stream_frame(["synthetic"] * len(refs), refs, np.zeros(len(refs), int),
                                             np.full((len(refs), 2), 0.5)), {"temperature": 2.0})
    with pytest.raises(DataError, match=r"manifest path '../outside.png' leaves the dataset root"):
        concat(real, synthetic, stream, out)
    assert_nothing_written(out)


# ---------------------------------------------------------------- through the real CLI

def run_stage(project: Path, params: dict, module: str = "stages.prepare") -> subprocess.CompletedProcess:
    """`python -m <module>` in `project` with its own params.yaml, as a user runs it; forked from the tests' fork
    server (tests/forkserver.py: its exit code, streams and tracebacks are a `python -m`'s). The plain process,
    under `dvc repro`, is test_dvc_repro_fails_with_the_one_line_error."""
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**pipeline_env(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([forked_python(), "-m", module], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _cli_corrupt(tmp: Path) -> tuple[dict, list[str]]:
    ds = folder(tmp / "ds", {"a": 3, "b": 3})
    truncated_png(ds / "a" / "broken.png")
    return {"data": {"target": str(ds), "target_classes": None, "shots": 1}}, [str(ds / "a" / "broken.png"), "not a readable image"]


CLI_CASES = {
    "dataset missing": lambda tmp: ({"data": {"target": "no/such/dir"}}, ["no/such/dir: dataset not found"]),
    "corrupt image": _cli_corrupt,
    "fewer images than shots": lambda tmp: (
        {"data": {"target": str(folder(tmp / "ds", {"a": 2, "b": 2})), "target_classes": None, "shots": 3}},
        ["class 'a' has 2 image(s), fewer than data.shots=3"]),
    "negative shots": lambda tmp: ({"data": {"shots": -1}}, ["params.yaml: data.shots:", "greater than or equal to 1", "-1"]),
    "unknown arch": lambda tmp: ({"classifier": {"arch": "vgg16"}},
                                 ["classifier.arch: got 'vgg16'; allowed:", "'convnet'", "'mobilenet_v3_small'"]),
}


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_prepare_cli_prints_one_line_and_leaves_no_output(tmp_path, case):
    project = tmp_path / "project"
    project.mkdir()
    params, fragments = CLI_CASES[case](tmp_path)
    proc = run_stage(project, params)
    assert_one_line_error(proc, *fragments)
    assert proc.stdout == ""
    assert_nothing_written(project / "data" / "prepared")


def test_prepare_cli_with_skip_reports_and_lists_the_skipped_files(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    ds = folder(tmp_path / "ds", {"a": 3, "b": 3})
    bad = [empty_png(ds / "a" / "empty.png"), text_as_png(ds / "b" / "text.png")]
    proc = run_stage(project, {"data": {"target": str(ds), "target_classes": None, "shots": 1, "on_bad_image": "skip"}})
    assert proc.returncode == 0, proc.stderr
    assert "2 bad files skipped" in proc.stdout
    manifest = json.loads((project / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["skipped_files"] == sorted(str(p) for p in bad)


def test_dvc_repro_fails_with_the_one_line_error(tmp_path):
    project = make_project(tmp_path / "project", {"data": {"shots": -2}})
    proc = run([sys.executable, "-m", "dvc", "repro", "prepare"], project, check=False, timeout=300,
               env=tool_env())  # plain processes, DVC's and the stage's, as a user runs them
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == ["error: params.yaml: data.shots: Input should be greater than or equal to 1 (got -2)"], output
    assert "Traceback" not in output
    assert_nothing_written(project / "data" / "prepared")


# ---------------------------------------------------------------- safe loading

def test_every_torch_load_in_the_stages_is_weights_only():
    import ast

    calls = []
    for path in sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "ganaug").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.append((str(path.relative_to(ROOT)), node))
    assert len(calls) >= 4  # classifier, imagenet weights, gan, checkpoints
    for name, node in calls:
        kw = {k.arg: k.value for k in node.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
            f"{name}:{node.lineno}: {ast.unparse(node)}"
