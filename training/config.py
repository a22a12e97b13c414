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
from typing import Any

from bonexr.errors import ConfigError
from bonexr.labels import DEFAULT_BODY_PARTS, normalize_body_parts

#: Backbones the model builders know (kept here so the CLI need not import Keras).
BACKBONE_NAMES: tuple[str, ...] = ("resnet50", "densenet169", "tiny")


def check_backbone(name: str) -> str:
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    return name


#: Fields that may change between an interrupted run and its resume.
_RESUME_FREE = {"tensorboard", "strategy", "progress", "cache"}


@dataclass
class TrainConfig:
    """Everything that determines a training run."""

    name: str = "bonexr"
    body_parts: tuple[str, ...] = DEFAULT_BODY_PARTS
    input_size: int = 224
    router_backbone: str = "resnet50"
    part_backbone: str = "resnet50"
    weights: str = "imagenet"
    batch_size: int = 16
    head_epochs: int = 2
    epochs: int = 20
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    patience: int = 5
    split_mode: str = "random"
    seed: int = 0
    augment: bool = True
    cache: bool = True
    strategy: str = "default"
    tensorboard: bool = False
    progress: bool = True
    synthetic: bool = False

    def __post_init__(self) -> None:
        self.body_parts = normalize_body_parts(self.body_parts)
        check_backbone(self.router_backbone)
        check_backbone(self.part_backbone)
        if self.input_size < 32:
            raise ConfigError(f"--size {self.input_size} is too small (minimum 32)")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if self.epochs < 0 or self.head_epochs < 0:
            raise ConfigError("epoch counts cannot be negative")
        if self.split_mode not in ("random", "official"):
            raise ConfigError("--split-mode must be random or official")
        if self.strategy not in ("default", "mirrored", "multiworker"):
            raise ConfigError("--strategy must be default, mirrored or multiworker")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["body_parts"] = list(self.body_parts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def result_affecting(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in _RESUME_FREE}

    def backbone_for(self, model_name: str) -> str:
        return self.router_backbone if model_name == "router" else self.part_backbone

    def model_names(self) -> list[str]:
        """``router`` plus one lower-case name per body part (``elbow``, ``hand``, ...)."""
        return ["router", *(p.lower() for p in self.body_parts)]


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
    )
    base.update(overrides)
    return TrainConfig(**base)


def save_config(config: TrainConfig, path: Path) -> None:
    from bonexr.bundle import write_json_atomic

    write_json_atomic(path, config.to_dict())


def load_config(path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from exc
