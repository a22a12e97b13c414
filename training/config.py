"""Training configuration: one dataclass, filled from CLI flags, saved with every run.

A run folder stores the config it was started with; ``--resume`` refuses a different one
(see :meth:`TrainConfig.result_affecting`), so a resumed model is never a silent mix of
two recipes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from bonexr.errors import ConfigError
from bonexr.labels import DEFAULT_BODY_PARTS, model_key, normalize_body_parts

# The choices of the enumerated options. The CLI's ``choices``, the validation below, the
# splitter and the strategy factory all read these, so a new value is added in one place.
Backbone = Literal["resnet50", "densenet169", "tiny", "small"]
SplitMode = Literal["random", "official"]
Strategy = Literal["default", "mirrored", "multiworker"]
Device = Literal["auto", "cpu", "gpu"]
Recipe = Literal["default", "mura-paper", "fracatlas-cpu"]
Schedule = Literal["cosine", "plateau"]
Calibrator = Literal["auto", "temperature", "platt", "isotonic", "none"]
BACKBONE_NAMES: tuple[str, ...] = get_args(Backbone)
#: Backbones that have no ImageNet weights (always trained from random init).
SCRATCH_BACKBONES: tuple[str, ...] = ("tiny", "small")
SPLIT_MODES: tuple[str, ...] = get_args(SplitMode)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEVICES: tuple[str, ...] = get_args(Device)
RECIPES: tuple[str, ...] = get_args(Recipe)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
CALIBRATOR_CHOICES: tuple[str, ...] = get_args(Calibrator)


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else a ConfigError naming the option and them."""
    if value not in choices:
        raise ConfigError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_backbone(name: str) -> str:
    return check_choice("backbone", name, BACKBONE_NAMES)


#: Fields that may change between an interrupted run and its resume.
#: The export-time choices (operating point, content gate) change no weight, so a run may
#: be resumed, or re-exported, with other values.
_RESUME_FREE = {
    "tensorboard",
    "strategy",
    "progress",
    "cache",
    "target_sensitivity",
    "calibrator",
    "ood_acceptance",
    "gate_dimensions",
    "device",
    "jit_compile",
    "deterministic",
    "cache_memory_gb",
}


@dataclass
class TrainConfig:
    """Everything that determines a training run."""

    name: str = "bonexr"
    #: The parts that get an abnormality model; empty (``--parts auto``, the default of
    #: ``bonexr train``) = every part in the data whose training split holds at least
    #: :data:`MIN_TRAIN_POSITIVES` abnormal studies (the others are still learned by the
    #: router and answered "recognised, no model for it"). The programmatic default is the
    #: mission's three parts.
    body_parts: tuple[str, ...] = DEFAULT_BODY_PARTS
    #: What the router learns; empty = every body part present in the data. A superset of
    #: ``body_parts``: the router must recognise a wrist even without a wrist model, or it
    #: silently sends it to the hand or elbow model.
    router_parts: tuple[str, ...] = ()
    input_size: int = 224
    #: The router's own resolution (0: ``input_size``): the router's graph average-pools
    #: its input down to this, so one served input feeds a fine part model and a cheap
    #: router. ``input_size`` must be a multiple of it.
    router_input_size: int = 0
    router_backbone: Backbone = "resnet50"
    part_backbone: Backbone = "resnet50"
    weights: str = "imagenet"
    #: Per replica: the global batch is this x num_replicas_in_sync (GPUs x workers).
    batch_size: int = 16
    head_epochs: int = 2
    epochs: int = 20
    #: The router's fine-tuning epochs (0: ``epochs``): telling a hand from a leg takes
    #: far fewer than seeing a fracture.
    router_epochs: int = 0
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    patience: int = 5
    split_mode: SplitMode = "random"
    seed: int = 0
    augment: bool = True
    cache: bool = True
    strategy: Strategy = "default"
    tensorboard: bool = False
    progress: bool = True
    synthetic: bool = False
    #: The triage operating point: the highest threshold that still catches this share of
    #: the validation split's abnormal images (studies, at study level).
    target_sensitivity: float = 0.95
    #: The probability map per part and level: ``auto`` picks by cross-fitted log-loss
    #: among those the validation split has the cases for; naming one makes too few
    #: cases an error; ``none`` serves the raw P, marked uncalibrated.
    calibrator: Calibrator = "auto"
    #: The content gate's limit accepts this share of in-distribution validation views.
    ood_acceptance: float = 0.99
    #: The content gate measures its distance in this many principal components of the
    #: router's features (0: all of them; the FracAtlas recipe's ResNet50 has 2048).
    gate_dimensions: int = 0
    #: Where to train: ``auto`` uses a GPU when TensorFlow sees one; ``gpu`` refuses to
    #: start without one (before any data is read); ``cpu`` hides the GPUs.
    device: Device = "auto"
    #: Keras mixed precision: float16 compute on a GPU, bfloat16 on a CPU (fast with AMX);
    #: variables and the output layer stay float32, and the export is float32.
    mixed_precision: bool = False
    #: XLA-compile the training step (often faster on GPUs; first epoch slower).
    jit_compile: bool = False
    #: Deterministic TensorFlow ops: a seeded run repeats exactly. Free on the CPU; on a GPU
    #: some kernels (e.g. cuDNN's fastest convolutions) are slower when deterministic.
    deterministic: bool = True
    #: Decoded images are cached in memory up to this many GB per dataset, on disk in the
    #: run folder (``cache/``, reused by later runs on the same images) beyond it.
    cache_memory_gb: float = 4.0
    #: Which recipe filled the fields below (``mura-paper``: :data:`RECIPE_PRESETS`).
    recipe: Recipe = "default"
    #: ``cosine``: warm-up then cosine decay; ``plateau``: the learning rate divided by 10
    #: when the validation loss stops improving (the MURA paper).
    lr_schedule: Schedule = "cosine"
    #: Contrast and brightness jitter on top of flips and rotations (up to 30 degrees).
    jitter: bool = True
    #: Where the data has defect boxes: zoomed crops around each box of an abnormal
    #: training image (and as many normal crops) added to a part model's training set
    #: (:mod:`training.crops`); 0: off.
    box_crops: int = 0
    #: Each part model is the average of this many checkpoints, the ones with the lowest
    #: validation loss, exported as one graph (1: the single best checkpoint).
    ensemble: int = 1

    def __post_init__(self) -> None:
        auto = not self.body_parts or list(self.body_parts) in (["auto"], list("auto"))
        self.body_parts = () if auto else normalize_body_parts(self.body_parts)
        self.router_parts = normalize_body_parts(self.router_parts) if self.router_parts else ()
        missing = [p for p in self.body_parts if self.router_parts and p not in self.router_parts]
        if missing:
            raise ConfigError(
                f"--router-parts must include every --parts entry; missing {', '.join(missing)}"
            )
        check_backbone(self.router_backbone)
        check_backbone(self.part_backbone)
        if self.input_size < 32:
            raise ConfigError(f"--size {self.input_size} is too small (minimum 32)")
        if self.router_input_size and (
            self.router_input_size < 32 or self.input_size % self.router_input_size
        ):
            raise ConfigError(
                f"--router-input-size {self.router_input_size} must be at least 32 and divide "
                f"--size {self.input_size}"
            )
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if self.epochs < 0 or self.head_epochs < 0 or self.router_epochs < 0:
            raise ConfigError("epoch counts cannot be negative")
        check_choice("split mode", self.split_mode, SPLIT_MODES)
        if not 0.5 < self.target_sensitivity < 1.0:
            raise ConfigError(
                f"--target-sensitivity {self.target_sensitivity:g} must lie in (0.5, 1)"
            )
        check_choice("calibrator", self.calibrator, CALIBRATOR_CHOICES)
        if not 0.5 < self.ood_acceptance <= 1.0:
            raise ConfigError("--ood-acceptance must be in (0.5, 1]")
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("device", self.device, DEVICES)
        check_choice("recipe", self.recipe, RECIPES)
        check_choice("learning-rate schedule", self.lr_schedule, SCHEDULES)
        if self.box_crops < 0:
            raise ConfigError("--box-crops cannot be negative")
        if self.ensemble < 1:
            raise ConfigError("--ensemble must be at least 1")
        if self.cache_memory_gb < 0:
            raise ConfigError("--cache-memory-gb cannot be negative")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["body_parts"] = list(self.body_parts)
        data["router_parts"] = list(self.router_parts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def result_affecting(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in _RESUME_FREE}

    def backbone_for(self, model_name: str) -> str:
        return self.router_backbone if model_name == "router" else self.part_backbone

    def weights_for(self, model_name: str) -> str:
        """``weights`` for ``model_name``; ``imagenet`` only where its backbone has ImageNet
        weights (a ResNet50 router with small part models: the router starts from them,
        the part models from random init)."""
        if self.weights == "imagenet" and self.backbone_for(model_name) in SCRATCH_BACKBONES:
            return "none"
        return self.weights

    def epochs_for(self, model_name: str) -> int:
        """Fine-tuning epochs of ``model_name`` (the router may have its own)."""
        return self.router_epochs if model_name == "router" and self.router_epochs else self.epochs

    def downsample_for(self, model_name: str) -> int:
        """The factor a model's graph pools its input by (the router's own resolution)."""
        if model_name != "router" or not self.router_input_size:
            return 1
        return self.input_size // self.router_input_size

    def model_names(self) -> list[str]:
        """``router`` plus one lower-case name per body part (``elbow``, ``hand``, ...)."""
        return ["router", *(model_key(p) for p in self.body_parts)]


@dataclass(frozen=True)
class CliOption:
    """One ``TrainConfig`` field as a command-line flag (``--field-name`` plus old aliases)."""

    field: str
    help: str
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--" + self.field.replace("_", "-"), *self.aliases)


#: The training options every training command takes, in ``--help`` order. The CLI adds
#: them by a loop and copies them back by field name; ``name`` and ``synthetic`` are
#: per-command.
CLI_OPTIONS: tuple[CliOption, ...] = (
    CliOption(
        "body_parts",
        "comma-separated body parts with an abnormality model, or auto: every part in the "
        "data with enough abnormal training studies",
        ("--parts",),
    ),
    CliOption(
        "router_parts",
        "comma-separated body parts the router learns (a superset of --parts)",
    ),
    CliOption("input_size", "input side in px (MURA paper: 320)", ("--size",)),
    CliOption("router_input_size", "the router's own side in px (0: --size; divides it)"),
    CliOption(
        "part_backbone", "backbone of the abnormality models", ("--backbone",), BACKBONE_NAMES
    ),
    CliOption("router_backbone", "backbone of the router", (), BACKBONE_NAMES),
    CliOption("weights", "imagenet | none | PATH to a local 'notop' weights file"),
    CliOption(
        "batch_size",
        "images per batch per replica (the global batch is this x GPUs x workers)",
    ),
    CliOption("head_epochs", "epochs training only the head on a frozen pretrained backbone"),
    CliOption("epochs", "fine-tuning epochs, whole network"),
    CliOption("router_epochs", "the router's fine-tuning epochs (0: --epochs)"),
    CliOption(
        "learning_rate", "head learning rate (or the only one without pretraining)", ("--lr",)
    ),
    CliOption("fine_tune_learning_rate", "fine-tuning learning rate", ("--fine-tune-lr",)),
    CliOption("patience", "early-stopping patience in epochs"),
    CliOption("seed", "random seed (split, initialisation, augmentation, input order)"),
    CliOption("augment", "flip/rotation/contrast/brightness augmentation"),
    CliOption("cache", "cache decoded images in memory"),
    CliOption(
        "split_mode", "random: 72/18/10 by patient; official: MURA's valid as test", (), SPLIT_MODES
    ),
    CliOption(
        "strategy",
        "tf.distribute strategy: one device, all local GPUs, or the hosts in TF_CONFIG "
        "(docs/training.md)",
        (),
        STRATEGIES,
    ),
    CliOption("tensorboard", "also write TensorBoard logs"),
    CliOption(
        "target_sensitivity",
        "the default (triage) operating point: sensitivity it must reach on validation",
    ),
    CliOption(
        "calibrator",
        "auto (cross-fitted choice), temperature, platt, isotonic or none (raw P)",
        (),
        CALIBRATOR_CHOICES,
    ),
    CliOption(
        "ood_acceptance",
        "share of in-distribution validation views the content gate's limit accepts",
    ),
    CliOption("gate_dimensions", "principal components the content gate measures in (0: all)"),
    CliOption(
        "device", "train on: auto (a GPU if visible), cpu, or gpu (refuse without)", (), DEVICES
    ),
    CliOption(
        "mixed_precision", "float16 (GPU) / bfloat16 (CPU) compute, float32 weights and export"
    ),
    CliOption("jit_compile", "XLA-compile the training step"),
    CliOption("deterministic", "deterministic TensorFlow ops (slower on some GPU kernels)"),
    CliOption(
        "cache_memory_gb", "decoded-image cache in memory up to this size, on disk beyond it"
    ),
    CliOption(
        "recipe",
        "default, or mura-paper (DenseNet169, 320 px, batch 8, Adam 1e-4 / 10 on plateau, "
        "flips + rotation, 5-checkpoint ensemble); explicit flags override it",
        choices=RECIPES,
    ),
    CliOption("lr_schedule", "cosine (warm-up, decay) or plateau (/10)", choices=SCHEDULES),
    CliOption("jitter", "contrast / brightness jitter besides flips and rotation"),
    CliOption("ensemble", "checkpoints (lowest validation loss) averaged per part model"),
    CliOption("box_crops", "zoomed training crops per defect-boxed abnormal image (0: off)"),
)

#: Abnormal training studies a part needs before ``--parts auto`` trains a model for it:
#: below this the validation and test splits hold a handful of abnormal cases, too few to
#: choose a checkpoint or an operating point on (FracAtlas's 8 fractured hips are the case).
MIN_TRAIN_POSITIVES = 30

#: The real-radiograph CPU recipe (chosen by measurement: docs/training.md).
FRACATLAS_CPU: dict[str, Any] = {
    "body_parts": (),
    "router_backbone": "resnet50",
    "part_backbone": "small",
    "input_size": 256,
    "router_input_size": 128,
    "gate_dimensions": 64,
    "weights": "none",
    "batch_size": 16,
    "head_epochs": 0,
    "epochs": 30,
    "router_epochs": 12,
    "learning_rate": 2e-3,
    "fine_tune_learning_rate": 2e-3,
    "patience": 8,
    "mixed_precision": False,
}

#: The fields each recipe sets. ``mura-paper``: Rajpurkar et al. 2017 (arXiv:1712.06957),
#: section 3: DenseNet169 from ImageNet weights, 320 x 320 inputs, batch 8, Adam with an
#: initial learning rate of 1e-4 divided by 10 when the validation loss plateaus, random
#: lateral inversions and rotations of up to 30 degrees, an ensemble of five models.
RECIPE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "mura-paper": {
        "router_backbone": "densenet169",
        "part_backbone": "densenet169",
        "input_size": 320,
        "batch_size": 8,
        "head_epochs": 0,
        "learning_rate": 1e-4,
        "fine_tune_learning_rate": 1e-4,
        "lr_schedule": "plateau",
        "jitter": False,
        "ensemble": 5,
    },
    # Real radiographs on a laptop CPU (FracAtlas, docs/training.md "The FracAtlas recipe"):
    # every choice below was measured against its alternatives on the validation split.
    "fracatlas-cpu": FRACATLAS_CPU,
}


def with_recipe(config: TrainConfig, given: set[str] | frozenset[str] = frozenset()) -> TrainConfig:
    """``config`` with its recipe's preset applied, except the fields in ``given`` (flags
    the user set explicitly win over the preset)."""
    preset = {k: v for k, v in RECIPE_PRESETS[config.recipe].items() if k not in given}
    return TrainConfig(**{**config.to_dict(), **preset})


#: Where ``bonexr demo`` / ``bonexr run`` generate the synthetic data, and how much.
DEMO_DATA = Path("data/synthetic/MURA-v1.1")
DEMO_PATIENTS_PER_PART = 120


def demo_config(**overrides: Any) -> TrainConfig:
    """The quick synthetic profile: same code path, tiny backbone, small images, few epochs."""
    base: dict[str, Any] = dict(
        name="demo",
        input_size=96,
        router_backbone="tiny",
        part_backbone="tiny",
        weights="none",
        batch_size=16,
        head_epochs=0,
        epochs=20,
        learning_rate=3e-3,
        fine_tune_learning_rate=3e-3,
        patience=6,
        synthetic=True,
        body_parts=DEFAULT_BODY_PARTS,
    )
    base.update(overrides)
    return TrainConfig(**base)


def save_config(config: TrainConfig, path: Path, **extra: Any) -> None:
    """Write ``config`` as JSON, plus ``extra`` facts of the run (e.g. ``replicas``,
    ``global_batch_size``); :func:`load_config` ignores keys that are not fields."""
    from bonexr.atomic import write_json_atomic

    write_json_atomic(path, {**config.to_dict(), **extra})


def load_config(path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from exc
