"""The one schema for params.yaml, used by every stage and by the Prefect flow.

`load_params()` validates the whole file before any stage does work, and turns
pydantic's errors into one `ParamsError` line that names the key, the problem
and (for choices) the allowed values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ganaug.config.errors import UserError
from ganaug.restore.corruptions import CORRUPTIONS, parse_spec

ClassRef = Union[int, str]  # a class index into the dataset's sorted classes, or a class name

CLASSIFIER_ARCHS = ("convnet", "resnet18", "resnet34", "mobilenet_v3_small")  # ganaug/nets/classifier.py builds these
GAN_ARCHS = ("resize", "dcgan")  # the keys of ganaug/nets/gan.py ARCHS (tests/test_params.py checks they agree)
DIFFAUG_OPS = ("color", "translation", "cutout")
AUGMENT_POLICIES = ("none", "crop", "trivialaugment", "randaugment", "elastic", "mixup", "cutmix")  # classical_aug.POLICIES
STREAM_AUGMENT_POLICIES = AUGMENT_POLICIES[:5]  # the stream's soft labels are not mixed: no mixup or cutmix



def _known_diffaug(v: str) -> str:
    """A comma-separated DiffAugment policy of known ops (or '')."""
    bad = [p for p in v.split(",") if p and p not in DIFFAUG_OPS]
    if bad:
        raise ValueError(f"unknown DiffAugment op(s) {bad}; allowed: {', '.join(DIFFAUG_OPS)} (comma-separated) or ''")
    return v


DiffAug = Annotated[str, AfterValidator(_known_diffaug)]  # gan.diffaug, dagan.diffaug

class ParamsError(UserError):
    """params.yaml is missing, unreadable or does not match the schema."""


SEED_MAX = 2**63 - 1  # numpy and torch both accept 0..2**63-1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, v: object, info) -> object:
        """YAML turns yes/no/true/false into booleans; only switches (bool fields) are one, so never read them as 1/0."""
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("expected a number or a name, not a boolean (yes/no/true/false)")
        return v


class DataParams(_Section):
    source: str = "digits"
    target: str = "digits"
    target_test: Optional[str] = None
    source_classes: Optional[list[ClassRef]] = [0, 1, 2, 3, 4]  # None = all classes
    target_classes: Optional[list[ClassRef]] = [5, 6, 7, 8, 9]
    shots: int = Field(10, ge=1)
    image_size: int = Field(16, ge=8, le=256)
    channels: Literal[1, 3] = 1
    on_bad_image: Literal["error", "skip"] = "error"
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # damage on purpose (stage restore; ganaug/restore/corruptions.py): 'none' or '<name>:<severity>'
    corrupt: str = "none"
    corrupt_on: Literal["train", "test", "both"] = "both"  # the target's training shots, its test set, or both

    @field_validator("corrupt")
    @classmethod
    def _known_corruption(cls, v: str) -> str:
        parse_spec(v)
        return v

    @field_validator("image_size")
    @classmethod
    def _multiple_of_4(cls, v: int) -> int:
        if v % 4:
            raise ValueError("must be a multiple of 4 (the GAN upsamples twice by 2)")
        return v


class ClassifierParams(_Section):
    arch: Literal[CLASSIFIER_ARCHS] = "convnet"  # type: ignore[valid-type]
    weights: Literal["none", "imagenet", "file"] = "none"  # file: start from `checkpoint`
    checkpoint: Optional[str] = None  # weights=file: your classifier (a state dict of `arch`, or a ganaug classifier .pt)
    width: int = Field(32, ge=4)
    steps: int = Field(400, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @model_validator(mode="after")
    def _weights_need_torchvision(self) -> "ClassifierParams":
        if self.weights == "imagenet" and self.arch == "convnet":
            raise ValueError("weights 'imagenet' needs a torchvision arch, not 'convnet'")
        if (self.weights == "file") != (self.checkpoint is not None):
            raise ValueError(f"weights 'file' and checkpoint go together (got weights={self.weights!r}, "
                             f"checkpoint={self.checkpoint!r})")
        return self


class GanParams(_Section):
    arch: Literal[GAN_ARCHS] = "resize"  # type: ignore[valid-type]  # dcgan: ~half the compute, less varied samples (ganaug/nets/gan.py)
    z_dim: int = Field(64, ge=1)
    g_width: int = Field(64, ge=4)
    d_width: int = Field(64, ge=4)
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=2)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    diffaug: DiffAug = "color,translation,cutout"
    ema_decay: float = Field(0.99, ge=0, lt=1)
    ema_start: int = Field(100, ge=0)
    checkpoint_every: int = Field(250, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # GAN transfer: start from the GAN trained on the source set (stage pretrain_gan -> models/gan_source.pt)
    # checkpoint: a GAN of yours, `init_checkpoint`; meta: the start meta-learned on source tasks (stage meta_gan)
    init: Literal["scratch", "source", "checkpoint", "meta"] = "scratch"
    init_checkpoint: Optional[str] = None  # init=checkpoint: a models/gan.pt written by ganaug (another run or project)
    source_steps: int = Field(1500, ge=1)  # pretrain_gan's steps (only with init: source)
    freeze: Literal["none", "d_lower", "alternate"] = "none"  # d_lower: FreezeD; alternate: D-only, then G-only phases
    freeze_d_blocks: int = Field(2, ge=1, le=4)  # freeze=d_lower: D's conv layers (4 with arch resize, 3 with dcgan) kept fixed
    alternate_steps: int = Field(100, ge=1)  # freeze=alternate: steps per phase
    lr_schedule: Literal["constant", "exp"] = "constant"  # exp: lr_t = lr_0 * exp(-lr_gamma * t)
    lr_gamma: float = Field(0.001, ge=0)
    average_last: int = Field(0, ge=0)  # > 0: also export the mean of G's last k snapshots (synth.generator: average)
    average_every: int = Field(100, ge=1)  # steps between those snapshots
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: G and D under bfloat16 autocast (weights and optimiser in fp32)

    @model_validator(mode="after")
    def _freeze_d_needs_source(self) -> "GanParams":
        if self.freeze == "d_lower" and self.init == "scratch":
            raise ValueError("freeze 'd_lower' fine-tunes a pretrained discriminator: it needs init 'source', "
                             "'checkpoint' or 'meta'")
        if (self.init == "checkpoint") != (self.init_checkpoint is not None):
            raise ValueError(f"init 'checkpoint' and init_checkpoint go together (got init={self.init!r}, "
                             f"init_checkpoint={self.init_checkpoint!r})")
        if self.arch == "dcgan" and self.freeze_d_blocks > 3:
            raise ValueError(f"freeze_d_blocks={self.freeze_d_blocks}: the dcgan discriminator has 3 conv layers")
        if self.average_last > 1 and (self.average_last - 1) * self.average_every >= self.steps:
            raise ValueError(f"average_last={self.average_last} snapshots every {self.average_every} steps "
                             f"do not fit in steps={self.steps}")
        return self


class MetaParams(_Section):
    """gan.init: meta: Reptile across source tasks (stage meta_gan, ganaug/train/meta_gan.py)."""
    episodes: int = Field(200, ge=1)  # source tasks meta-trained on
    inner_steps: int = Field(20, ge=1)  # GAN steps per task
    inner_lr: float = Field(2e-4, gt=0)  # Adam lr of G and D in the inner loop (the base of lr_factors)
    outer_lr: float = Field(0.5, gt=0, le=1)  # Reptile step, annealed linearly to 0
    ways: Optional[int] = Field(None, ge=2)  # classes per task; null = len(data.target_classes)
    shots: Optional[int] = Field(None, ge=1)  # images per class per task; null = data.shots
    val_fraction: float = Field(0.2, gt=0, lt=1)  # source classes held out for meta-validation
    val_tasks: int = Field(3, ge=1)  # meta-validation tasks
    lr_factors: list[float] = [1.0]  # adaptation lr candidates, x inner_lr (0.5 and 2.0 never chosen; docs/gan_transfer.md)
    gamma_grid: list[float] = [0.0, 0.002]  # decay candidates: lr_t = lr_0 * exp(-gamma t)
    steps_grid: list[int] = [100, 200, 400]  # adaptation step candidates
    checkpoint_every: int = Field(50, ge=1)  # episodes between checkpoints
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("lr_factors", "gamma_grid", "steps_grid")
    @classmethod
    def _non_empty_positive(cls, v: list) -> list:
        if not v or any(x < 0 for x in v) or (v and isinstance(v[0], int) and min(v) < 1):
            raise ValueError("a non-empty list of non-negative numbers (steps: at least 1)")
        return v


class SynthParams(_Section):
    per_class: Optional[int] = Field(100, ge=0)  # synthetic images per class; or null with `ratio`
    ratio: Optional[float] = Field(None, ge=0)  # synthetic images per real shot of the class; or null with `per_class`
    truncation: Optional[float] = Field(None, gt=0)  # redraw noise entries with |z| > truncation; null = off
    generator: Literal["ema", "average", "raw"] = "ema"  # which weights of models/gan.pt to sample from
    filter: Literal["none", "confidence", "top_fraction"] = "none"  # judged by models/finetune/baseline.pt
    min_confidence: float = Field(0.5, ge=0, le=1)  # filter=confidence: keep p(intended class) >= this
    keep_fraction: float = Field(0.5, gt=0, le=1)  # filter=top_fraction: keep this top fraction of the candidates
    max_factor: float = Field(4.0, ge=1)  # generate at most max_factor x the quota per class
    min_nn_distance: float = Field(0.0, ge=0)  # drop candidates closer than this to a real shot (feature space)
    batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # the generator kind synthesized from (ganaug/nets/generators.py KINDS; checked by the stages that read it):
    # gan (models/gan.pt) | repair (models/generators/repair.pt, see repair:) | dagan (models/generators/dagan.pt,
    # see dagan:)
    kind: str = "gan"

    @model_validator(mode="after")
    def _one_quota(self) -> "SynthParams":
        if (self.per_class is None) == (self.ratio is None):
            raise ValueError("set exactly one of per_class and ratio (the other to null), "
                             f"got per_class={self.per_class}, ratio={self.ratio}")
        return self


class FinetuneParams(_Section):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_mult: float = Field(0.1, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    checkpoint_every: int = Field(100, ge=1)  # steps between resumable checkpoints (checkpoints/finetune/)
    # classical augmentation policy of the *_classical finetune variants (the others use none)
    augment: Literal[AUGMENT_POLICIES] = "trivialaugment"  # type: ignore[valid-type]
    # The second stream of the `distill` variants (synthetic and/or source images; ganaug/train/streams.py).
    synth_batch: int = Field(32, ge=1)  # stream images per step, besides batch_size real ones
    synth_weight: float = Field(1.0, ge=0)  # weight of the stream's loss; 0 gives the real-only model bit for bit
    synth_labels: Literal["hard", "soft", "mixed"] = "soft"  # soft: the teacher's; source images are always soft
    mixed_hard_weight: float = Field(0.5, ge=0, le=1)  # synth_labels=mixed: weight of the hard labels
    temperature: float = Field(2.0, gt=0)  # distillation temperature
    teacher: list[Literal["baseline", "classical"]] = ["baseline", "classical"]  # real-shot variants; several = their mean
    teacher_seeds: int = Field(3, ge=1, le=16)  # > 1: also average each teacher's recipe at seeds seed+1, seed+2, ...
    schedule: Literal["joint", "synthetic_first"] = "joint"  # synthetic_first: stream alone, then real alone
    first_fraction: float = Field(0.5, gt=0, lt=1)  # schedule=synthetic_first: share of steps on the stream
    bn: Literal["real", "frozen", "joint"] = "real"  # BatchNorm statistics: real batches only | frozen | both
    synth_augment: Literal[STREAM_AUGMENT_POLICIES] = "none"  # type: ignore[valid-type]  # on the stream's images
    real_augment: Literal[AUGMENT_POLICIES] = "none"  # type: ignore[valid-type]  # on the real batch of the distill variants
    source_images: Optional[int] = Field(5000, ge=1)  # source images relabelled (a seeded subset; null = all)
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("teacher")
    @classmethod
    def _some_teacher(cls, v: list) -> list:
        if not v or len(set(v)) != len(v):
            raise ValueError("name one or more distinct real-shot variants (baseline, classical)")
        return v


class RestoreParams(_Section):
    enabled: bool = False  # restore the target images (stage restore) before the GAN and fine-tuning see them
    method: Literal["learned", "classical"] = "learned"  # which restoration feeds the pipeline when enabled
    classical: Literal["auto", "median", "bilateral", "unsharp", "biharmonic"] = "auto"  # auto: by corruption
    corruption: Optional[str] = None  # what the learned restorer learns to undo; null = data.corrupt
    init: Literal["source", "meta"] = "source"  # source: trained on the source images; meta: a Reptile start
    meta_episodes: int = Field(100, ge=1)  # init meta: tasks (a random half of the source classes each)
    meta_inner_steps: int = Field(10, ge=1)  # restorer steps per task
    meta_outer_lr: float = Field(0.5, gt=0, le=1)  # Reptile step, annealed linearly to 0
    meta_task_images: int = Field(64, ge=2)  # images per task
    width: int = Field(16, ge=8)
    steps: int = Field(600, ge=1)  # on the source images
    adapt_steps: int = Field(100, ge=0)  # then on the target shots (their known pixels when they are damaged)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    adv_weight: float = Field(0.01, ge=0)  # weight of the adversarial term against L1 (pix2pix: 1/100)
    clean_fraction: float = Field(0.1, ge=0, lt=1)  # undamaged images per batch: leave clean images alone
    checkpoint_every: int = Field(250, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("enabled", mode="before")
    @classmethod
    def _a_switch(cls, v: object) -> object:
        if not isinstance(v, bool):
            raise ValueError("expected true or false")
        return v

    @field_validator("corruption")
    @classmethod
    def _known_corruption(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and parse_spec(v) is None:
            raise ValueError("name a corruption to learn to undo ('<name>:<severity>'), or null for data.corrupt")
        return v

    def learned_spec(self, data_corrupt: str) -> str:
        """The corruption the learned restorer is trained on (given data.corrupt)."""
        return self.corruption or data_corrupt


class RepairParams(_Section):
    """The `repair` generator kind (stage train_repair): variations of the shots, damaged at random and repaired
    by a U-Net trained on the source images. Trained only when synth.kind is repair."""
    corruptions: list[str] = ["occlusion", "noise", "blur"]  # names of ganaug/restore/corruptions.py, one drawn per image
    strengths: list[float] = [0.3, 0.7]  # [lo, hi]: each image's severity is drawn uniformly in it
    width: int = Field(8, ge=1)  # the U-Net's first width
    steps: int = Field(150, ge=1)  # on the source images, damaged on the fly
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("corruptions")
    @classmethod
    def _known_corruptions(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in CORRUPTIONS]
        if not v or bad:
            raise ValueError(f"expected a non-empty list of corruption names out of {', '.join(CORRUPTIONS)}"
                             + (f", got {bad}" if bad else ""))
        return v

    @field_validator("strengths")
    @classmethod
    def _a_range(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"expected [lo, hi] with 0 < lo <= hi <= 1, got {v}")
        return v


class DaganParams(_Section):
    """The `dagan` generator kind (stage train_dagan): G(x, z) makes variations of a shot, trained adversarially
    on pairs of source images of one class, then adapted on pairs of the target shots. Trained only when
    synth.kind is dagan."""
    z_dim: int = Field(16, ge=1)
    g_width: int = Field(16, ge=1)
    d_width: int = Field(16, ge=1)
    steps: int = Field(1000, ge=1)  # on pairs of source images
    adapt_steps: int = Field(0, ge=0)  # then on pairs of the target shots (classes with two shots or more)
    batch_size: int = Field(32, ge=1)
    lr_g: float = Field(5e-4, gt=0)
    lr_d: float = Field(5e-4, gt=0)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    diffaug: DiffAug = "translation,cutout"  # DiffAugment on D's pairs, each pair shifted and cut as a whole
    mismatch: float = Field(0.0, ge=0)  # D also scores real pairs of two classes as fakes (weight of that loss)
    diversity: float = Field(0.0, ge=0)  # mode seeking: rewards G for different images from different noise, up to a cap
    checkpoint_every: int = Field(100, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)


class EvalParams(_Section):
    batch_size: int = Field(512, ge=1)


class PublishParams(_Section):
    """What `data/augmented` (stage concat) publishes besides the real shots: the stream of the `gan_source`
    variant with the teacher's probabilities, and which rows the class folders (the hard-label view) hold."""
    source_images: bool = True  # publish the relabelled source images (origin `source`); false: the GAN's only
    hard_view: Literal["real", "confident"] = "real"  # class folders: the real shots | + confident synthetic images
    min_confidence: float = Field(0.7, ge=0, le=1)  # hard_view confident: published p(asked class) >= this ...
    max_per_shot: int = Field(1, ge=0)  # ... and at most this many synthetic images per real shot of the class


class Params(_Section):
    data: DataParams = DataParams()
    classifier: ClassifierParams = ClassifierParams()
    gan: GanParams = GanParams()
    synth: SynthParams = SynthParams()
    finetune: FinetuneParams = FinetuneParams()
    eval: EvalParams = EvalParams()
    publish: PublishParams = PublishParams()
    restore: RestoreParams = RestoreParams()
    meta: MetaParams = MetaParams()
    repair: RepairParams = RepairParams()
    dagan: DaganParams = DaganParams()

    @model_validator(mode="after")
    def _restore_knows_what(self) -> "Params":
        if self.restore.enabled and self.restore.learned_spec(self.data.corrupt) == "none":
            raise ValueError("restore.enabled needs a corruption to undo: set data.corrupt or restore.corruption")
        return self


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "value_error":
        msg = str(err["ctx"]["error"])
        if not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
    elif err["type"] == "literal_error":
        msg = f"got {err['input']!r}; allowed: {err['ctx']['expected']}"
    elif "input" in err and not isinstance(err["input"], dict):
        msg = f"{msg} (got {err['input']!r})"
    return f"{key}: {msg}" if key else msg


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ParamsError(f"{source}: {problems}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (1-based line and column)."""
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))
