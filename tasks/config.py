"""Typed run configuration: defaults < preset < variant < experiment file < explicit overrides.

Experiment files list only what differs from defaults. ``resolve_run_config`` returns a frozen,
fully resolved ``RunConfig``; ``flatten`` turns it into MLflow params. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from models import get_spec


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and what was expected."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    seed: int = 1
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, used on CUDA only
    select_metric: str = "valid/mae"  # model selection; always a validation metric
    select_mode: Literal["min", "max"] = "min"
    eval_batch_size: int = 256
    num_threads: int = 0  # 0 = torch default


@dataclass(frozen=True)
class RunConfig:
    model: str
    variant: str
    preset: str
    model_cfg: Any
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_name(self) -> str:
        return f"{self.model}/{self.variant}/seed{self.train.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "variant": self.variant,
            "preset": self.preset,
            "model_cfg": dataclasses.asdict(self.model_cfg),
            "train": dataclasses.asdict(self.train),
        }

    def fingerprint(self) -> str:
        """Content hash of the resolved config (a cache key component)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def apply_overrides(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    """``dataclasses.replace`` with strict keys and light type coercion (YAML ints for floats)."""
    if not overrides:
        return obj
    known = {f.name: f for f in fields(obj)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    changes = {}
    for key, value in overrides.items():
        current = getattr(obj, key)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true/false, got {value!r}")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
            value = int(value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        elif current is not None and not isinstance(value, type(current)) and not is_dataclass(current):
            raise ConfigError(
                f"{where}.{key}: expected {type(current).__name__}, got {type(value).__name__} {value!r}"
            )
        changes[key] = value
    return replace(obj, **changes)


def read_yaml(path: Path, what: str = "file") -> Any:
    """A YAML file's content (``{}`` when empty); a missing file or bad YAML is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc


def load_overrides_file(path: str | Path) -> dict[str, Any]:
    """An experiment/params YAML: ``{model: {...}, train: {...}}`` (either part optional)."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or set(data) - {"model", "train"}:
        raise ConfigError(f"{path}: expected a mapping with keys 'model' and/or 'train', got {data!r:.200}")
    return data


def resolve_run_config(
    model: str = "mmafnet",
    variant: str | None = None,
    preset: str = "quick",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    input_spec: dict[str, Any] | None = None,
) -> RunConfig:
    """Build the fully resolved config. ``input_spec`` (dims, seq_len, task) comes from the data."""
    spec = get_spec(model)
    variant = variant or spec.default_variant
    if variant not in spec.variants:
        raise ConfigError(f"model {model!r} has no variant {variant!r}; expected one of {list(spec.variants)}")
    if preset not in spec.presets:
        raise ConfigError(f"model {model!r} has no preset {preset!r}; expected one of {list(spec.presets)}")
    preset_cfg = spec.presets[preset]
    mcfg = spec.config_cls()
    mcfg = apply_overrides(mcfg, preset_cfg.get("model", {}), f"preset {preset}.model")
    mcfg = apply_overrides(mcfg, spec.variants[variant], f"variant {variant}")
    mcfg = apply_overrides(mcfg, model_overrides or {}, "model")
    mcfg = apply_overrides(mcfg, input_spec or {}, "dataset input spec")
    tcfg = apply_overrides(TrainConfig(), preset_cfg.get("train", {}), f"preset {preset}.train")
    tcfg = apply_overrides(tcfg, train_overrides or {}, "train")
    if not tcfg.select_metric.startswith("valid/"):
        raise ConfigError(f"train.select_metric must be a validation metric (valid/...), got {tcfg.select_metric!r}")
    if tcfg.epochs < 1 or tcfg.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be >= 1")
    return RunConfig(model=model, variant=variant, preset=preset, model_cfg=mcfg, train=tcfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
