"""params.yaml: one pydantic schema, one-line errors naming the key (and, for choices, the allowed values),
checked by every stage before it does any work."""
from __future__ import annotations

import importlib

import pytest
import yaml

from conftest import ROOT
from ganaug.config.errors import one_line
from ganaug.config.params import DIFFAUG_OPS, Params, ParamsError, load_params, parse_params


@pytest.mark.parametrize("raw, fragments", [
    ({"data": {"shots": -3}}, ["data.shots:", "greater than or equal to 1", "-3"]),
    ({"data": {"shots": 0}}, ["data.shots:", "greater than or equal to 1"]),
    ({"data": {"shots": "ten"}}, ["data.shots:", "valid integer", "'ten'"]),
    ({"data": {"shots": 2.5}}, ["data.shots:", "fractional part"]),
    ({"data": {"shots": True}}, ["data.shots:", "not a boolean"]),
    ({"gan": {"steps": "many"}}, ["gan.steps:", "valid integer", "'many'"]),
    ({"gan": {"beta1": 1.5}}, ["gan.beta1:", "less than 1"]),
    ({"classifier": {"arch": "vgg16"}},
     ["classifier.arch: got 'vgg16'; allowed:", "'convnet'", "'resnet18'", "'resnet34'", "'mobilenet_v3_small'"]),
    ({"classifier": {"weights": "coco"}}, ["classifier.weights: got 'coco'; allowed:", "'none'", "'imagenet'"]),
    ({"classifier": {"arch": "convnet", "weights": "imagenet"}}, ["classifier:", "needs a torchvision arch"]),
    ({"gan": {"diffaug": "color,zoom"}}, ["gan.diffaug:", "unknown DiffAugment op(s) ['zoom']", "allowed: " + ", ".join(DIFFAUG_OPS)]),
    ({"data": {"on_bad_image": "ignore"}}, ["data.on_bad_image: got 'ignore'; allowed: 'error' or 'skip'"]),
    ({"data": {"channels": 2}}, ["data.channels: got 2; allowed: 1 or 3"]),
    ({"data": {"image_size": 18}}, ["data.image_size:", "multiple of 4", "18"]),
    ({"data": {"image_size": 4}}, ["data.image_size:", "greater than or equal to 8"]),
    ({"data": {"max_image_pixels": 10}}, ["data.max_image_pixels:", "greater than or equal to 64"]),
    ({"data": {"seed": -1}}, ["data.seed:", "greater than or equal to 0"]),
    ({"finetune": {"lr": float("nan")}}, ["finetune.lr:", "finite"]),
    ({"finetune": {"checkpoint_every": 0}}, ["finetune.checkpoint_every:", "greater than or equal to 1"]),
    ({"data": {"shotz": 5}}, ["data.shotz: unknown key"]),
    ({"training": {"steps": 5}}, ["training: unknown key"]),
    ({"gan": 7}, ["gan:", "valid dictionary"]),
])
def test_bad_values_are_rejected_naming_the_key(raw, fragments):
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    msg = str(info.value)
    assert msg.startswith("params.yaml: ") and "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_every_bad_key_is_named_at_once():
    with pytest.raises(ParamsError) as info:
        parse_params({"data": {"shots": -1}, "gan": {"steps": "many"}})
    assert "data.shots:" in str(info.value) and "gan.steps:" in str(info.value)


def test_project_params_and_defaults_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params) and p.data.on_bad_image in ("error", "skip")
    assert parse_params({}) == Params()
    assert Params().finetune.checkpoint_every >= 1  # a default keeps params.yaml files without the key valid


def test_lax_numbers_from_yaml_are_accepted():
    p = parse_params({"data": {"shots": "5"}, "finetune": {"lr": 1}})
    assert p.data.shots == 5 and p.finetune.lr == 1.0


def _load(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg


def test_invalid_yaml_says_where_in_one_line(tmp_path):
    msg = _load(tmp_path, "data:\n  shots: [1, 2\n  seed: 3\nclassifier: {\n")
    assert "not valid YAML" in msg and "line " in msg and "column " in msg


def test_yaml_tab_indentation_is_one_line(tmp_path):
    assert "not valid YAML" in _load(tmp_path, "data:\n\tshots: 3\n")


def test_top_level_must_be_a_mapping(tmp_path):
    assert "expected a mapping of sections, got list" in _load(tmp_path, "- data\n- gan\n")


def test_missing_and_unreadable_params_files(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    assert "cannot read" in _load(tmp_path, b"data:\n  source: \xff\xfe\n")


def test_wrong_type_in_a_file(tmp_path):
    assert "gan.steps:" in _load(tmp_path, yaml.safe_dump({"gan": {"steps": "many"}}))


def test_one_line_collapses_line_breaks_only():
    assert one_line("a  b\n   c\r\nd\n") == "a  b c d"


# ---------------------------------------------------------------- every stage validates first

STAGES = [
    ("prepare", None),
    ("pretrain", None),
    ("train_gan", None),
    ("train_repair", None),
    ("train_dagan", None),
    ("synthesize", None),
    ("concat", None),
    ("finetune", ["--variant", "baseline", "--train", "data/restored/target_train.npz"]),
    ("evaluate", ["models/finetune/baseline.pt"]),
]


@pytest.mark.parametrize("stage, argv", STAGES)
def test_each_stage_rejects_bad_params_before_any_work(tmp_path, monkeypatch, capsys, stage, argv):
    """In an empty folder a stage that did any work first would fail on its missing inputs instead."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gan": {"steps": "many"}}))
    main = importlib.import_module(f"stages.{stage}").main
    with pytest.raises(SystemExit) as info:
        main() if argv is None else main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("error: params.yaml: gan.steps:") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_architecture_names_are_the_ones_the_nets_build():
    from ganaug.config.params import CLASSIFIER_ARCHS, GAN_ARCHS
    from ganaug.nets.classifier import ClassifierConfig, build_classifier
    from ganaug.nets.gan import ARCHS

    assert set(GAN_ARCHS) == set(ARCHS)
    for arch in CLASSIFIER_ARCHS:  # every name the schema allows builds a classifier (no weights needed)
        assert build_classifier(ClassifierConfig(arch=arch, n_classes=3)).head.out_features == 3
