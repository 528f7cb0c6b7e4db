"""Typed run configuration: defaults < preset < variant < experiment file < explicit overrides.

Experiment files list only what differs from defaults. ``resolve_run_config`` returns a frozen,
fully resolved ``RunConfig``; ``flatten`` turns it into MLflow params. Unknown keys are errors, and
so are values outside a hyper-parameter's range (``RANGES``), checked as each layer is applied so
the message names the layer (preset, variant, ``model``/``train`` overrides or the YAML file).

``train.select_metric``/``select_mode`` default to ``auto``: the data's kind picks the metric
(``tasks.metrics.DEFAULT_SELECTION``: valid MAE for sentiment and depression, valid weighted F1 for
emotion), the metric's name picks the direction. The resolved config holds the concrete values.

``train.text_encoder="finetune"`` (``tasks.text_finetune``) gives the model the text encoder's width
as ``text_dim`` (``encoder_input_spec``), applied after the dataset's input spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from msaflow.errors import ConfigError
from msaflow.models import get_spec
from msaflow.tasks.metrics import DATA_KINDS, DEFAULT_SELECTION, metric_names, selection_mode


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "adamax", "sgd"] = "adam"  # adamax: TFN's authors' code
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    # early stopping: end training once the selection metric has not improved for this many
    # epochs (0 = off; MMSA's trainers stop after 8). The best epoch is kept either way.
    patience: int = 0
    seed: int = 1
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, used on CUDA only
    select_metric: str = (
        "auto"  # model selection, a validation metric; auto = the data kind's default
    )
    select_mode: Literal["auto", "min", "max"] = "auto"  # auto = min for errors/losses, else max
    eval_batch_size: int = 256
    num_threads: int = 0  # 0 = torch default
    # per-dimension feature standardisation fit on the train split (tasks.data.standardize_splits)
    standardize: bool = True
    # MLflow system metrics (system/cpu_utilization_percentage, memory, disk, network; GPU where
    # nvidia-ml-py is installed) sampled every system_metrics_interval seconds while a run trains.
    # They observe a run without changing it, so they are not part of its fingerprint.
    system_metrics: bool = True
    system_metrics_interval: float = 10.0

    # gradient accumulation: the optimisers step every k batches (and after an epoch's last batch);
    # each batch's loss is weighted by its share of its group's rows, so a group's gradient is the
    # mean over its rows (tasks.train.train_model's docstring: grad_clip, SGM and the hooks)
    grad_accum_steps: int = 1
    # the engine optimiser's learning rate per optimiser step (tasks.train.lr_factor): a linear
    # warmup over warmup_epochs (x optimiser steps per epoch, rounded), then constant, linear decay
    # or cosine decay over the remaining steps of `epochs`; a model's own optimiser is not scheduled
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_epochs: float = 0.0  # may be a fraction of an epoch; at most `epochs`
    # benchmark/debug switch: read every step's loss, parts, predictions and traces back from the
    # device at that step (a non-finite loss raises before its backward) instead of once per
    # epoch; the same weights either way (bench/gpu_check.py measures the difference)
    sync_every_step: bool = False
    # text: "frozen" = the store's text features as they are; "finetune" = a transformers encoder
    # fine-tuned on the store's raw text, its states as the text features (tasks.text_finetune)
    text_encoder: Literal["frozen", "finetune"] = "frozen"
    text_encoder_path: str = ""  # a local BERT-family checkpoint folder; "" = the offline MiniLM
    text_encoder_lr: float = 5e-5  # the encoder's own rate: MMSA's learning_rate_bert (Self-MM)
    text_encoder_weight_decay: float = 0.0
    text_max_tokens: int = 50  # tokens per utterance, [CLS] and [SEP] included (MMSA's 50)


# TrainConfig fields that observe a run without changing its result: left out of the fingerprint.
OBSERVE_ONLY = ("system_metrics", "system_metrics_interval")


@dataclass(frozen=True)
class RunConfig:
    model: str
    variant: str
    preset: str
    model_cfg: Any
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_name(self) -> str:
        return self.run_name_for(self.variant)

    def run_name_for(self, cell: str) -> str:
        """``model/cell/seedN``: the one run name (MLflow, progress lines, failure rows); a
        table's cell may name a variant with overrides (``sgm-ep15``)."""
        return f"{self.model}/{cell}/seed{self.train.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "variant": self.variant,
            "preset": self.preset,
            "model_cfg": dataclasses.asdict(self.model_cfg),
            "train": dataclasses.asdict(self.train),
        }

    def fingerprint(self) -> str:
        """Content hash of the resolved config (a cache key component), less the fields that only
        observe a run (``OBSERVE_ONLY``): switching system metrics off reuses the cached result."""
        d = self.to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k not in OBSERVE_ONLY}
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config ``to_dict`` wrote (``config/resolved.json``), rebuilt as it was resolved.

        JSON turns tuples into lists; a field whose default is a tuple gets one back. Unknown keys
        are a ConfigError (the file came from another msaflow version); a model config written
        before the output kind was called ``head`` names it ``task`` (``HEAD_ALIASES``)."""

        def build(cls_: type, values: dict[str, Any], where: str) -> Any:
            known = {f.name: f for f in fields(cls_)}
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ConfigError(
                    f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}"
                )
            out = {}
            for key, value in values.items():
                f = known[key]
                default = (
                    f.default_factory()
                    if f.default_factory is not dataclasses.MISSING
                    else f.default
                )
                out[key] = (
                    tuple(value)
                    if isinstance(default, tuple) and isinstance(value, list)
                    else value
                )
            return cls_(**out)

        try:
            model, variant, preset = d["model"], d["variant"], d["preset"]
            model_values, train_values = d["model_cfg"], d["train"]
        except (KeyError, TypeError):
            raise ConfigError(
                "resolved config: expected keys model, variant, preset, model_cfg and train"
            ) from None
        return cls(
            model=model,
            variant=variant,
            preset=preset,
            model_cfg=build(
                get_spec(model).config_cls,
                head_alias(model_values, get_spec(model).config_cls, f"{model} config"),
                f"{model} config",
            ),
            train=build(TrainConfig, train_values, "train"),
        )


# Old model-config keys and the fields they now name: the model's output kind (regression |
# classification) was ``task`` (in resolved configs logged to MLflow, ``model.task``) before it
# was ``head``. Read from old config.json files, experiment/params YAML and input specs; never
# written.
HEAD_ALIASES = {"task": "head"}


def head_alias(values: dict[str, Any] | None, cls_: type, where: str) -> dict[str, Any]:
    """``values`` with the old key ``task`` read as ``head`` (``HEAD_ALIASES``), for a model config
    class that has a ``head`` field and no ``task`` one; both given and different: ConfigError."""
    if not values:
        return values or {}
    names = {f.name for f in fields(cls_)}
    out = dict(values)
    for old, new in HEAD_ALIASES.items():
        if old in out and old not in names and new in names:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ConfigError(
                    f"{where}: {old!r} is the old name of {new!r}; got both, {short_repr(value)} "
                    f"and {short_repr(out[new])}"
                )
            out[new] = value
    return out


@dataclass(frozen=True)
class Range:
    """A closed or open numeric interval; ``None`` = unbounded on that side. Values must be
    finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return (
                f"a value in {'(' if self.lo_open else '['}{self.lo:g}, "
                f"{self.hi:g}{')' if self.hi_open else ']'}"
            )
        if self.lo is not None:
            return f"a finite number {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"a finite number {'<' if self.hi_open else '<='} {self.hi:g}"
        return "a finite number"


_NON_NEG, _POS, _AT_LEAST_1 = Range(lo=0), Range(lo=0, lo_open=True), Range(lo=1)
# Hyper-parameter ranges by field name, applied to whichever config (train or any model's) has the
# field; the names mean the same thing in every model family.
RANGES: dict[str, Range] = {
    # train
    "epochs": _AT_LEAST_1,
    "batch_size": _AT_LEAST_1,
    "eval_batch_size": _AT_LEAST_1,
    "lr": _POS,
    "momentum": Range(0, 1),
    "weight_decay": _NON_NEG,
    "grad_clip": _NON_NEG,
    "patience": _NON_NEG,
    "seed": _NON_NEG,
    "num_threads": _NON_NEG,
    "system_metrics_interval": _POS,
    "grad_accum_steps": _AT_LEAST_1,
    "warmup_epochs": _NON_NEG,
    "text_encoder_lr": _POS,
    "text_encoder_weight_decay": _NON_NEG,
    "text_max_tokens": Range(lo=2),  # [CLS] and [SEP]
    # MMAFNet (eqs. 9, 14, 18)
    "alpha": _NON_NEG,
    "delta": Range(0, 1),
    "lambda1": _NON_NEG,
    "lambda2": _NON_NEG,
    "modulation_epochs": _NON_NEG,
    "probe_weight": _NON_NEG,
    "cmd_moments": _AT_LEAST_1,
    "conv_kernel": _AT_LEAST_1,
    "attn_heads": _AT_LEAST_1,
    # MMCL
    "lambda_cl": _NON_NEG,
    "temperature": _POS,
    "w_temperature": _POS,
    "heads": _AT_LEAST_1,
    "ff_mult": _AT_LEAST_1,
    "d": _AT_LEAST_1,
    "head_hidden": _AT_LEAST_1,
    # shared
    "hidden": _AT_LEAST_1,
    "layers": _AT_LEAST_1,
    "dropout": Range(0, 1, hi_open=True),
}


def check_value(name: str, value: Any, where: str) -> None:
    """ConfigError ``<where>.<name>: expected <range>, got <value>`` for an out-of-range number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return  # types are apply_overrides' job
    rng = RANGES.get(name)
    if rng is not None and not rng.contains(value):
        raise ConfigError(f"{where}.{name}: expected {rng.describe()}, got {short_repr(value)}")
    if rng is None and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}.{name}: expected a finite number, got {short_repr(value)}")


def _literal_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation we cannot evaluate: the model validates itself
        return {}
    return {k: typing.get_args(t) for k, t in hints.items() if typing.get_origin(t) is Literal}


def check_ranges(obj: Any, where: str, keys: Iterable[str] | None = None) -> None:
    """Check ``obj``'s fields (or only ``keys``) against ``RANGES`` and their ``Literal``
    choices."""
    names = [f.name for f in fields(obj)] if keys is None else list(keys)
    choices = _literal_choices(type(obj))
    for name in names:
        value = getattr(obj, name)
        if name in choices and value not in choices[name]:
            raise ConfigError(
                f"{where}.{name}: expected one of {list(choices[name])}, got {short_repr(value)}"
            )
        check_value(name, value, where)


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
            raise ConfigError(f"{where}.{key}: expected true/false, got {short_repr(value)}")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif (
            isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float)
        ):
            if not value.is_integer():
                raise ConfigError(f"{where}.{key}: expected an integer, got {short_repr(value)}")
            value = int(value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        elif (
            current is not None
            and not isinstance(value, type(current))
            and not is_dataclass(current)
        ):
            raise ConfigError(
                f"{where}.{key}: expected {type(current).__name__}, got {type(value).__name__} "
                f"{short_repr(value)}"
            )
        changes[key] = value
    return replace(obj, **changes)


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: a config file never needs them, and a 1 KB file of nested
    aliases (a "billion laughs") expands to gigabytes in anything that walks or prints it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                "accepted in msaflow files; write the value out"
            )
        return super().compose_node(parent, index)


def short_repr(value: Any, limit: int = 200) -> str:
    """A bounded repr for error messages (never builds the whole repr of a huge value)."""
    import reprlib

    r = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr takes no arguments
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 8, 8, 8, 8
    r.maxstring = r.maxother = limit
    return r.repr(value)[:limit]


def read_yaml(path: Path, what: str = "file") -> Any:
    """A YAML file's content (``{}`` when empty); a missing file, bad YAML, text that is not UTF-8
    or a file that uses aliases is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: expected UTF-8 text (byte {exc.start} is not)") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({short_repr(str(exc), 300)})") from None


def load_overrides_file(path: str | Path) -> dict[str, Any]:
    """An experiment/params YAML: ``{model: {...}, train: {...}}`` (either part optional).

    Out-of-range values are refused here already, so the error names the file.
    """
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or set(data) - {"model", "train"}:
        raise ConfigError(
            f"{path}: expected a mapping with keys 'model' and/or 'train', got {short_repr(data)}"
        )
    for part, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: {part}: expected a mapping of field: value, got {short_repr(values)}"
            )
        for key, value in values.items():
            check_value(str(key), value, f"{path}: {part}")
    return data


def _kind_candidates(
    data_kind: str | None, input_spec: dict[str, Any] | None
) -> tuple[str, ...] | None:
    """The data kinds the data can be: given, else read from the label kind, else unknown (None)."""
    if data_kind is not None:
        if data_kind not in DATA_KINDS:
            raise ConfigError(
                f"dataset task: expected one of {list(DATA_KINDS)}, got {data_kind!r}"
            )
        return (data_kind,)
    spec = input_spec or {}
    head = spec.get("head", spec.get("task"))  # task: its old name (HEAD_ALIASES)
    if head is None:
        return None
    # emotion is the only classification kind; sentiment and depression are both regressions
    return tuple(t for t in DATA_KINDS if (t == "emotion") == (head == "classification"))


_PER_CLASS = ("acc_", "f1_", "f1pos_")


def _allowed_selection(
    kinds: Sequence[str], class_names: Sequence[str] | None, num_classes: int
) -> set[str]:
    allowed = {"valid/loss"}
    for t in kinds:
        names = metric_names(t, class_names, num_classes)
        if t == "emotion" and not class_names:  # per-class names unknown: show the pattern
            placeholder = [str(c) for c in range(max(num_classes, 2))]
            names = [
                n
                for n in names
                if not (n.startswith(_PER_CLASS) and n.split("_", 1)[1] in placeholder)
            ]
            names += [f"{p}<class>" for p in _PER_CLASS]
        allowed |= {f"valid/{n}" for n in names}
    return allowed


def resolve_selection(
    train: TrainConfig,
    kinds: Sequence[str] | None,
    class_names: Sequence[str] | None = None,
    num_classes: int = 4,
) -> TrainConfig:
    """Concrete ``select_metric``/``select_mode`` for data of kind(s) ``kinds`` (None
    = unknown).

    ``auto`` takes ``DEFAULT_SELECTION``; an explicit metric must be a validation metric the data
    kind computes (checked when the kind is known).
    """
    metric, mode = train.select_metric, train.select_mode
    explicit = metric != "auto"
    if not explicit:
        defaults = {DEFAULT_SELECTION[t] for t in (kinds or ("sentiment",))}
        if len(defaults) != 1:
            raise ConfigError(
                f"train.select_metric: task kinds {list(kinds or ())} have different defaults "
                f"{sorted(defaults)}; set it explicitly"
            )
        metric, default_mode = defaults.pop()
        mode = default_mode if mode == "auto" else mode
    if not metric.startswith("valid/") or metric == "valid/":
        raise ConfigError(
            f"train.select_metric: expected a validation metric (valid/...), got {metric!r}"
        )
    if (
        kinds and explicit
    ):  # the defaults are computed by construction (tests/tasks/test_metrics.py)
        allowed = _allowed_selection(kinds, class_names, num_classes)
        per_class = (
            metric.removeprefix("valid/").startswith(_PER_CLASS)
            and "emotion" in kinds
            and not class_names
        )  # class names unknown here
        if metric not in allowed and not per_class:
            raise ConfigError(
                f"train.select_metric: {metric!r} is not computed for task "
                f"{'/'.join(kinds)}; expected one of {sorted(allowed)}"
            )
    if mode == "auto":
        mode = selection_mode(metric)
    return replace(train, select_metric=metric, select_mode=mode)


def resolve_run_config(
    model: str = "mmafnet",
    variant: str | None = None,
    preset: str = "quick",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    input_spec: dict[str, Any] | None = None,
    data_kind: str | None = None,
    class_names: Sequence[str] | None = None,
) -> RunConfig:
    """Build the fully resolved config. ``input_spec`` (dims, seq_len, head) comes from the data.

    ``data_kind`` (sentiment | emotion | depression, the manifest's ``task``) and ``class_names``
    make the selection-metric check exact; without them the data kind is read from
    ``input_spec["head"]`` (classification = emotion).
    """
    spec = get_spec(model)
    variant = variant or spec.default_variant
    if variant not in spec.variants:
        raise ConfigError(
            f"model {model!r} has no variant {variant!r}; expected one of {list(spec.variants)}"
        )
    if preset not in spec.presets:
        raise ConfigError(
            f"model {model!r} has no preset {preset!r}; expected one of {list(spec.presets)}"
        )
    preset_cfg = spec.presets[preset]
    mcfg = spec.config_cls()
    tcfg = TrainConfig()
    layers = [
        ("model", f"preset {preset}.model", preset_cfg.get("model", {})),
        ("model", f"variant {variant}", spec.variants[variant]),
        ("model", "model", model_overrides or {}),
        ("model", "dataset input spec", input_spec or {}),
        ("train", f"preset {preset}.train", preset_cfg.get("train", {})),
        ("train", "train", train_overrides or {}),
    ]
    for part, where, overrides in layers:
        if part == "model":
            overrides = head_alias(overrides, spec.config_cls, where)
            mcfg = apply_overrides(mcfg, overrides, where)
            check_ranges(mcfg, where, overrides)
        else:
            tcfg = apply_overrides(tcfg, overrides, where)
            check_ranges(tcfg, where, overrides)
    check_ranges(mcfg, f"{model} config")  # the defaults themselves, and fields no layer touched
    check_ranges(tcfg, "train")
    if tcfg.warmup_epochs > tcfg.epochs:
        raise ConfigError(
            f"train.warmup_epochs: expected at most train.epochs={tcfg.epochs}, got "
            f"{short_repr(tcfg.warmup_epochs)}"
        )
    if tcfg.text_encoder == "finetune":  # the model's text input is the encoder's, not the store's
        mcfg = apply_overrides(mcfg, encoder_input_spec(tcfg, mcfg.seq_len), "train.text_encoder")
    num_classes = int(getattr(mcfg, "num_classes", 4) or 4)
    tcfg = resolve_selection(
        tcfg, _kind_candidates(data_kind, input_spec), class_names, num_classes
    )
    return RunConfig(model=model, variant=variant, preset=preset, model_cfg=mcfg, train=tcfg)


def encoder_dir(t: TrainConfig) -> Path:
    """The encoder's local folder: ``text_encoder_path``, else the offline MiniLM's."""
    from msaflow.feature_store.extract.text import resolve_model

    if not t.text_encoder_path:
        return Path(resolve_model(None)[0])
    path = Path(t.text_encoder_path).expanduser()
    if not (path / "config.json").is_file():  # a hub name would download: refused, not resolved
        raise ConfigError(
            f"train.text_encoder_path: expected a local transformers checkpoint folder holding "
            f"config.json (a BERT-family encoder), got {t.text_encoder_path!r}"
        )
    return path.resolve()


def encoder_input_spec(t: TrainConfig, seq_len: int) -> dict[str, int]:
    """The model's text input under fine-tuning: ``text_dim`` = the encoder's hidden size (read
    from its config.json, without importing transformers), ``seq_len`` at least the token count."""
    path = encoder_dir(t) / "config.json"
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: expected a transformers config ({type(exc).__name__})"
        ) from None
    hidden = next((conf[k] for k in ("hidden_size", "dim", "d_model") if k in conf), None)
    if not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"{path}: hidden_size: expected a positive integer, got {hidden!r}")
    return {"text_dim": hidden, "seq_len": max(seq_len, t.text_max_tokens)}


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
