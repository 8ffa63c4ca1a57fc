"""The classifiers: a small CNN (default) and torchvision architectures with their published weights.

Every classifier exposes `features(x) -> (B, F)` (penultimate layer, used for
transfer and for feature-space metrics), `forward(x) -> (B, K)` logits, and
`reset_head(K)` for a new set of classes. Inputs are float images in [-1, 1].
"""
from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganaug.config.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClassifierConfig:
    arch: str = "convnet"
    n_classes: int = 10
    channels: int = 1
    image_size: int = 16
    width: int = 32


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvNet(nn.Module):
    """Five conv blocks, two poolings, global average pooling, linear head."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        w = cfg.width
        self.body = nn.Sequential(
            _conv_block(cfg.channels, w), _conv_block(w, w), nn.MaxPool2d(2),  # (B, w, S/2, S/2)
            _conv_block(w, 2 * w), _conv_block(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, S/4, S/4)
            _conv_block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
        )
        self.feature_dim = 4 * w
        self.head = nn.Linear(self.feature_dim, cfg.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K)

    def reset_head(self, n_classes: int) -> None:
        self.head = nn.Linear(self.feature_dim, n_classes)


class TorchvisionNet(nn.Module):
    """A torchvision backbone whose own classifier layer is replaced by `head`.

    Gray images are repeated to 3 channels, upsampled to at least 32x32 and
    normalised with ImageNet statistics, as the published weights expect.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.get_model(cfg.arch, weights=None)
        self.feature_dim = _drop_classifier(self.backbone)
        self.head = nn.Linear(self.feature_dim, cfg.n_classes)
        self.input_size = max(32, cfg.image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1) / 2  # (B, C, H, W) in [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] < self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        return self.backbone((x - self.mean) / self.std)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reset_head(self, n_classes: int) -> None:
        self.head = nn.Linear(self.feature_dim, n_classes)


def _drop_classifier(model: nn.Module) -> int:
    """Replace the torchvision model's last linear layer with Identity; return its in_features."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        dim, model.fc = model.fc.in_features, nn.Identity()
        return dim
    seq = model.classifier  # e.g. mobilenet: Sequential(..., Linear)
    dim = seq[-1].in_features
    seq[-1] = nn.Identity()
    return dim


def build_classifier(cfg: ClassifierConfig) -> nn.Module:
    return ConvNet(cfg) if cfg.arch == "convnet" else TorchvisionNet(cfg)


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision keeps the published ImageNet weights of `arch` (the torch hub cache)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_imagenet_weights(model: TorchvisionNet, arch: str) -> None:
    """Load the published weights from the local cache; never downloads."""
    path = imagenet_weights_path(arch)
    if not path.is_file():
        raise UserError(
            f"classifier.weights=imagenet: {path} not found. This machine cannot download; "
            f"copy the torchvision file {path.name} there (or set TORCH_HOME to a folder with "
            f"hub/checkpoints/{path.name}), or use classifier.weights=none"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    missing, _ = model.backbone.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"{path}: weights do not match torchvision {arch} (missing {missing[:3]}...)")


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the layer a new set of classes replaces: ours (`head.`) and torchvision's own."""
    if not isinstance(model, TorchvisionNet):
        return ("head.",)
    seq = getattr(model.backbone, "classifier", None)
    last = f"classifier.{len(seq) - 1}." if isinstance(seq, nn.Sequential) else "classifier."
    return ("head.", "fc.", last)


def _read_state(path: Path, arch: str) -> dict:
    """The tensors of a user's checkpoint: a plain state dict, or a ganaug classifier file of the same arch."""
    where = f"classifier.checkpoint: {path}"
    if not path.is_file():
        raise UserError(f"{where}: file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"{where}: not readable as weights only ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if isinstance(blob, dict) and "state_dict" in blob and isinstance(blob.get("config"), dict):
        if blob["config"].get("arch") != arch:
            raise UserError(f"{where}: a ganaug {blob['config'].get('arch')!r} classifier; classifier.arch is {arch!r}")
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"{where}: not a state dict (a dict of tensors) nor a ganaug classifier checkpoint")
    return blob


def load_user_weights(model: nn.Module, path: str | Path, arch: str) -> None:
    """Start `model` from a user's classifier (`classifier.weights: file`), all but the class layer.

    Accepts the state dict of `arch` as torchvision or ganaug writes it (torchvision keys
    with or without `backbone.`). Missing, unexpected or differently shaped tensors are a
    UserError naming the first few; the class layer may have any number of classes.
    """
    path = Path(path)
    state = _read_state(path, arch)
    if isinstance(model, TorchvisionNet):
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
        target = model.backbone
    else:
        target = model
    heads = _head_prefixes(model)
    own = {k: v for k, v in target.state_dict().items() if not k.startswith(heads)}
    given = {k: v for k, v in state.items() if not k.startswith(heads)}
    where = f"classifier.checkpoint: {path}"
    if own.keys() - given.keys():
        raise UserError(f"{where}: not a {arch} state dict; missing {sorted(own.keys() - given.keys())[:3]}")
    if given.keys() - own.keys():
        raise UserError(f"{where}: not a {arch} state dict; unexpected {sorted(given.keys() - own.keys())[:3]}")
    bad = [f"{k} {tuple(given[k].shape)} (needs {tuple(v.shape)})" for k, v in own.items() if v.shape != given[k].shape]
    if bad:
        raise UserError(f"{where}: shapes do not fit classifier.arch={arch} and its width/channels: {', '.join(bad[:2])}")
    target.load_state_dict({**target.state_dict(), **given})


def save_classifier(path: Path, model: nn.Module, cfg: ClassifierConfig, class_names: list[str], summary: dict) -> None:
    torch.save({"config": asdict(cfg), "state_dict": model.state_dict(), "class_names": class_names, "summary": summary}, path)


def load_classifier(path: str | Path) -> tuple[nn.Module, ClassifierConfig, list[str]]:
    """Rebuild a classifier saved by `save_classifier` (weights only, no pickle)."""
    return load_classifier_and_summary(path)[:3]


def load_classifier_and_summary(path: str | Path) -> tuple[nn.Module, ClassifierConfig, list[str], dict]:
    """As `load_classifier`, plus the summary `save_classifier` stored (e.g. which variant it is)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: classifier checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ClassifierConfig(**blob["config"])
        model = build_classifier(cfg)
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: not a ganaug classifier checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    return model, cfg, list(blob["class_names"]), dict(blob.get("summary") or {})
