"""One dataclass per phase, validated at construction; `Config` is either.

Defaults are the original's settings (the paper profile: STL-10, 96 x 96, G = 7, K = 1).
`PROFILES` holds the overrides of the smaller profiles that the notebooks and tests use.
Configs round-trip through plain dicts (`to_dict` / `from_dict`), which is how papermill
parameters, checkpoints and metrics files carry them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

DATASETS = ("stl10", "synthetic", "folder")
ENCODERS = ("flatten", "cnn", "resnet18")
OPTIMIZERS = ("adam", "adamw", "sgd")  # sgd: Nesterov momentum 0.9, the CNNs' recipe
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# standard: logits / sqrt(D/H); original: q, k and v each / D^(1/4) (model.SelfAttention)
ATTENTION_SCALES = ("standard", "original")
FINETUNE_MODELS = ("apl", "s-cnn", "s-resnet")
UNREADABLE_IMAGES = ("skip", "error")  # what a folder dataset does with a file it cannot decode
# a per-image augmentation policy on top of the crop and flip (apl_core.augment)
AUGMENT_POLICIES = ("none", "trivialaugment", "randaugment")
# the pretext task a pretraining solves (apl_core.pretext), and the positional embedding each
# task is defined with: jigsaw's answer is an order and MAE's decoder must know where a hidden
# token goes, so both need one; rotation and MP3 are defined without (with one, MP3's position
# prediction is read off the embedding). APL takes either: with one, it is notebook 06's leak.
PRETEXTS = ("apl", "rotation", "jigsaw", "mae", "mp3")
PRETEXT_POSITIONS = {"rotation": False, "jigsaw": True, "mae": True, "mp3": False}


def token_dim(image_size: int, grid: int, crop: int, encoder: str = "flatten") -> int:
    """Token dimension D of each encoder (flatten 3 (P-K)^2, CNN 128, ResNet-18 512)."""
    if encoder == "cnn":
        return 128
    if encoder == "resnet18":
        return 512
    return 3 * (image_size // grid - crop) ** 2


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid: {allowed}")


@dataclass
class _Common:
    """Fields shared by both phases: data, optimisation and where/how to run."""

    # data
    dataset: str = "stl10"
    data_dir: str = "data"
    image_size: int = 96
    unreadable_images: str = "skip"  # folder data: skip files that do not decode, or "error"
    # optimisation
    epochs: int = 300
    batch_size: int = 1024
    lr: float = 1.15e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    warmup_frac: float = 0.05
    warmup_start: float = 0.5  # warm-up starts at this fraction of lr
    final_lr_frac: float = 0.1  # cosine annealing ends at this fraction of lr
    schedule_per_step: bool = False  # the original steps the schedule once per epoch
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    precision: str = "auto"  # auto: bf16 autocast where the device has fast bf16, else fp32
    compile: bool = False
    # run
    seed: int = 0
    device: str = "auto"
    runs_dir: str = "runs"
    run_name: str = ""  # empty: derived from the settings
    quiet: bool = False

    phase: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.dataset not in DATASETS:
            _fail("dataset", self.dataset, f"choose one of {DATASETS}")
        if self.unreadable_images not in UNREADABLE_IMAGES:
            _fail("unreadable_images", self.unreadable_images, "choose 'skip' or 'error'")
        for name in ("image_size", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(name, value, "must be a positive integer")
        if not self.lr > 0:
            _fail("lr", self.lr, "the learning rate must be > 0")
        if self.weight_decay < 0:
            _fail("weight_decay", self.weight_decay, "must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            _fail("optimizer", self.optimizer, f"choose one of {OPTIMIZERS}")
        if not 0 <= self.warmup_frac < 1:
            _fail("warmup_frac", self.warmup_frac, "must be in [0, 1)")
        if not 0 < self.warmup_start <= 1:
            _fail("warmup_start", self.warmup_start, "must be in (0, 1]")
        if not 0 <= self.final_lr_frac <= 1:
            _fail("final_lr_frac", self.final_lr_frac, "must be in [0, 1]")
        if self.grad_clip < 0:
            _fail("grad_clip", self.grad_clip, "must be >= 0 (0 disables clipping)")
        if self.precision not in PRECISIONS:
            _fail("precision", self.precision, f"choose one of {PRECISIONS}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            _fail("device", self.device, "use 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from plain data; unknown keys are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} option(s) {unknown}; known options: {sorted(known)}"
            )
        typed = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                typed[f.name] = _coerce(f.name, values[f.name], f.type)
        return cls(**typed)

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Accept the obvious conversions (int for float, tuple for list); refuse the rest."""
    expected = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation)
    if expected is None:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(
            f"{name}={value!r} is invalid: expected {annotation}, got {type(value).__name__}"
        )
    return value


def _check_dropout_and_crop_scale(config: Config) -> None:
    """Fields both phases have, each phase with its own default (so they are not _Common's)."""
    if not 0 <= config.dropout < 1:
        _fail("dropout", config.dropout, "must be in [0, 1)")
    if not 0 <= config.patch_dropout < 1:
        _fail("patch_dropout", config.patch_dropout, "PatchDropout p must be in [0, 1)")
    if not 0 < config.crop_scale <= 1:
        _fail("crop_scale", config.crop_scale, "must be in (0, 1]")


@dataclass
class PretrainConfig(_Common):
    """APL-G,K pretraining (docs/method.md, 'Pretraining recipe')."""

    # puzzle
    grid: int = 7
    crop: int = 1
    # model
    encoder: str = "flatten"
    blocks: int = 4
    heads: int = 16
    hidden_mult: int = 3
    dropout: float = 0.15
    patch_dropout: float = 0.1
    patch_dropout_at_eval: bool = False  # the original's: drop patches when evaluating too
    attention_scale: str = "standard"  # or "original": q, k and v each divided by D^(1/4)
    # a learned positional embedding added to the tokens: the positional leak, a control that
    # makes the puzzle trivial (notebook 06)
    positional_embedding: bool = False
    mlp_head: bool = False
    # data
    num_images: int = 0  # 0: the whole unlabeled split; the original's SAMPLE mode is 8192
    holdout_images: int = 1000  # held out from training to measure position accuracy
    crop_scale: float = 0.6  # RandomResizedCrop scale (crop_scale, 1.0)
    knn_every: int = 0  # epochs between kNN probes of the features (0: never)
    # epochs between snapshots of the weights, snapshots/epoch<N>.pt (0: none): the features
    # at several points of one run (notebook 06's budget curve); not part of the run's name
    snapshot_every: int = 0
    pretext: str = "apl"  # the task pretrained on (PRETEXTS; notebook 07 compares them)

    phase: ClassVar[str] = "pretrain"

    def _validate(self) -> None:
        super()._validate()
        n = self.image_size
        if not isinstance(self.grid, int) or not 1 <= self.grid <= n:
            _fail("grid", self.grid, f"G must satisfy 1 <= G <= image_size ({n})")
        patch = n // self.grid
        if not isinstance(self.crop, int) or not 0 <= self.crop < patch:
            _fail(
                "crop", self.crop,
                f"K must satisfy 0 <= K < image_size // grid = {n} // {self.grid} = {patch}",
            )
        if self.encoder not in ENCODERS:
            _fail("encoder", self.encoder, f"choose one of {ENCODERS}")
        if self.attention_scale not in ATTENTION_SCALES:
            _fail("attention_scale", self.attention_scale, f"choose one of {ATTENTION_SCALES}")
        for name in ("blocks", "heads", "hidden_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _fail(name, value, "must be a positive integer")
        d = self.token_dim
        if d % self.heads:
            divisors = [h for h in range(1, min(d, 64) + 1) if d % h == 0]
            _fail(
                "heads", self.heads,
                f"must divide the token dimension D = {d}; head counts that would: {divisors}",
            )
        _check_dropout_and_crop_scale(self)
        if self.num_images < 0:
            _fail("num_images", self.num_images, "must be >= 0 (0: the whole split)")
        if self.holdout_images < 0:
            _fail("holdout_images", self.holdout_images, "must be >= 0")
        for name in ("knn_every", "snapshot_every"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "must be >= 0 (0: never)")
        if self.pretext not in PRETEXTS:
            _fail("pretext", self.pretext, f"choose one of {PRETEXTS}")
        needed = PRETEXT_POSITIONS.get(self.pretext, self.positional_embedding)
        if self.positional_embedding != needed:
            _fail("positional_embedding", self.positional_embedding,
                  f"pretext={self.pretext!r} is defined {'with' if needed else 'without'} a "
                  f"positional embedding: set positional_embedding={needed}")

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    @property
    def token_dim(self) -> int:
        return token_dim(self.image_size, self.grid, self.crop, self.encoder)


@dataclass
class FinetuneConfig(_Common):
    """Fine-tuning, linear probing and the from-scratch baselines (docs/method.md,
    'Fine-tuning recipe')."""

    model: str = "apl"  # apl | s-cnn | s-resnet
    pretrained: str = ""  # checkpoint path or run name; empty with model='apl' means BENCHMARK
    # learned positional embeddings added to the tokens (ViT-style): the baseline the method
    # argues against; on a pretrained model they are new and learned during fine-tuning
    positional_embedding: bool = False
    # with no checkpoint, the APL architecture is built from these (ignored when pretrained)
    architecture: dict = field(default_factory=dict)
    head_only: bool = False
    mlp_head: bool = False
    freeze_encoder: bool = False
    dropout: float = 0.1
    patch_dropout: float = 0.1
    patch_dropout_at_eval: bool = False  # the original's: test accuracy with patches dropped
    npc: int = 500  # labelled images per class; 500 is STL-10's whole train split
    val_per_class: int = 0  # held out from the labelled split for model selection
    test_per_class: int = 0  # 0: every test image
    label_seed: int = 42  # draws the labelled subset and the validation part
    eval_every: int = 2
    evaluate_test: bool = True  # False: a hyper-parameter search, which must not see the test set
    select_best: bool = False  # keep the weights with the best validation accuracy
    crop_scale: float = 0.8
    num_classes: int = 10
    # the small-data regularisation (docs/method.md), every part off by default
    label_smoothing: float = 0.0  # the target's share spread evenly over the classes
    mixup_alpha: float = 0.0  # MixUp's Beta(alpha, alpha) mixing weight; 0: no MixUp
    cutmix_alpha: float = 0.0  # CutMix's; with both, each batch takes one of the two
    augment_policy: str = "none"  # none | trivialaugment | randaugment, drawn per image
    drop_path: float = 0.0  # stochastic depth of the last block (transformers only)
    # the fine-tuning recipe (docs/method.md)
    epochs: int = 30
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1

    phase: ClassVar[str] = "finetune"

    def _validate(self) -> None:
        super()._validate()
        if self.model not in FINETUNE_MODELS:
            _fail("model", self.model, f"choose one of {FINETUNE_MODELS}")
        if self.model != "apl" and (self.pretrained or self.head_only or self.freeze_encoder
                                    or self.positional_embedding):
            _fail(
                "model", self.model,
                "the CNN baselines train from scratch: pretrained, head_only, freeze_encoder "
                "and positional_embedding apply to model='apl' only",
            )
        _check_dropout_and_crop_scale(self)
        if not 0 <= self.label_smoothing < 1:
            _fail("label_smoothing", self.label_smoothing, "must be in [0, 1)")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "must be >= 0 (0: off)")
        if self.augment_policy not in AUGMENT_POLICIES:
            _fail("augment_policy", self.augment_policy, f"choose one of {AUGMENT_POLICIES}")
        if not 0 <= self.drop_path < 1:
            _fail("drop_path", self.drop_path, "must be in [0, 1)")
        if self.drop_path and self.model != "apl":
            _fail("drop_path", self.drop_path, "stochastic depth drops transformer blocks: "
                  "the CNN baselines have none; use drop_path=0 with model="
                  f"{self.model!r}")
        for name in ("npc", "eval_every", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _fail(name, value, "must be a positive integer")
        for name in ("val_per_class", "test_per_class"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "must be >= 0")
        if self.select_best and not self.val_per_class:
            _fail("select_best", self.select_best,
                  "selecting on validation needs a validation part: set val_per_class > 0")
        if self.architecture:
            arch = {k: v for k, v in self.architecture.items() if k in ARCHITECTURE_FIELDS}
            if set(arch) != set(self.architecture):
                extra = sorted(set(self.architecture) - set(ARCHITECTURE_FIELDS))
                _fail("architecture", self.architecture, f"unknown keys {extra}; "
                      f"known: {list(ARCHITECTURE_FIELDS)}")
            PretrainConfig(image_size=self.image_size, **arch)

    @property
    def benchmark(self) -> bool:
        """The original's BENCHMARK: the APL architecture trained from random initialisation."""
        return self.model == "apl" and not self.pretrained


Config = PretrainConfig | FinetuneConfig


# The fields of PretrainConfig that fix the architecture a checkpoint holds.
ARCHITECTURE_FIELDS = (
    "grid", "crop", "encoder", "blocks", "heads", "hidden_mult", "attention_scale",
    "positional_embedding", "mlp_head",
)

# Overrides per profile. paper = the defaults (docs/method.md), on STL-10. gpu = the paper's
# model and recipe on the embedded dataset, for one GPU in minutes. quick = the embedded
# dataset on a laptop CPU (the README gives the measured course times); smoke = seconds, for
# tests.
# controls: notebook 06's small pretrainings (apl_core.controls), the profile's pretraining
# with `budget` on top, and the grids and crops it tries. On the 96-pixel profiles 3 heads
# divide D = 3 (P - K)^2 at every grid and crop; 16 would not (unmeasured there).
_LARGE_CONTROLS = {"budget": dict(num_images=20_000, epochs=20, heads=3),
                   "grids": (4, 7, 12), "crops": (0, 1, 2)}

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"pretrain": {}, "finetune": {}, "npcs": (10, 20, 50, 100, 200, 500),
              "controls": _LARGE_CONTROLS},
    "gpu": {
        "pretrain": dict(dataset="synthetic", num_images=50_000, holdout_images=1000,
                         epochs=40, knn_every=10),
        "finetune": dict(dataset="synthetic", batch_size=64, eval_every=10, val_per_class=50),
        "probe": dict(lr=2e-2),  # carried over from quick
        "npcs": (10, 20, 50, 100, 200, 500),
        "controls": _LARGE_CONTROLS,
    },
    "quick": {
        # 48 x 48 images, G = 4, K = 1: 11 x 11 cropped patches, D = 363 = 3 x 11^2 (3 heads),
        # 12,000 images x 12 epochs. Fine-tuning keeps the paper's lr, 1,000 test images (5
        # points are more than two standard errors) and a validation part for choices.
        "pretrain": dict(
            dataset="synthetic", image_size=48, grid=4, crop=1, heads=3, blocks=4,
            hidden_mult=3, num_images=12_500, holdout_images=500, epochs=12, batch_size=128,
            lr=1e-3,
        ),
        "finetune": dict(
            dataset="synthetic", image_size=48, epochs=20, batch_size=32, eval_every=10,
            test_per_class=100, val_per_class=50,
        ),
        # head-only training by gradient descent (head_only, the CLI's --head-only)
        "probe": dict(lr=2e-2),
        "npcs": (10, 30, 100),
        # the converged search (apl_core.search): optimizer steps of every searched run per NPC
        # (100, 50 and 120 epochs at batch 32), long enough for every method to converge, which
        # the search checks by running each choice again with twice the steps (docs/results.md)
        "max_steps": {10: 400, 30: 500, 100: 3840},
        # 3,500 images x 4 epochs per control, about 40 s each on 2 cores
        "controls": {"budget": dict(num_images=4000, epochs=4), "grids": (3, 4, 6),
                     "crops": (0, 1, 2)},
    },
    "smoke": {
        "pretrain": dict(
            dataset="synthetic", image_size=32, grid=4, crop=1, heads=3, blocks=2,
            hidden_mult=2, num_images=1024, holdout_images=256, epochs=3, batch_size=64,
            lr=2e-3, quiet=True,
        ),
        "finetune": dict(
            dataset="synthetic", image_size=32, epochs=2, batch_size=64, lr=1e-3,
            eval_every=1, npc=10, test_per_class=20, val_per_class=2, quiet=True,
        ),
        "npcs": (10,),
        "max_steps": {10: 6},
        "controls": {"budget": dict(num_images=384, holdout_images=128, epochs=1),
                     "grids": (2, 4), "crops": (0, 1)},
    },
}


def profile_npcs(profile: str) -> tuple[int, ...]:
    """The labelled images per class (NPC) that notebook 04 sweeps in `profile`."""
    if profile not in PROFILES:
        _fail("profile", profile, f"choose one of {tuple(PROFILES)}")
    return PROFILES[profile]["npcs"]


def profile_values(profile: str, phase: str) -> dict[str, Any]:
    """The settings `profile` gives `phase`: 'pretrain', 'finetune', or 'probe' (fine-tuning
    of the head only, with the profile's probe settings on top). Fine-tuning from scratch
    (BENCHMARK) builds the profile's own pretraining architecture, so the comparison with a
    pretrained model is fair and the paper's 16 heads are not applied to the small profiles'
    token dimensions."""
    if profile not in PROFILES:
        _fail("profile", profile, f"choose one of {tuple(PROFILES)}")
    if phase not in PHASES:
        _fail("phase", phase, f"choose one of {tuple(PHASES)}")
    if phase == "probe":
        return {**profile_values(profile, "finetune"), **PROFILES[profile].get("probe", {}),
                "head_only": True}
    values = dict(PROFILES[profile][phase])
    pretrain = PROFILES[profile]["pretrain"]
    if phase == "finetune":
        values.setdefault("architecture", {
            name: pretrain[name] for name in ARCHITECTURE_FIELDS if name in pretrain})
    return values


PHASES = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "probe": FinetuneConfig}


def profile_config(profile: str, phase: str, **overrides):
    """The config of `phase` ('pretrain', 'finetune' or 'probe') in `profile`, with overrides."""
    return PHASES[phase].from_dict({**profile_values(profile, phase), **overrides})
