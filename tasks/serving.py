"""A trained model as an MLflow pyfunc: served wherever msaflow is installed, with nothing pickled.

It is logged with MLflow 3's "models from code": the model's code is ``tasks/pyfunc_model.py`` (it
only calls ``mlflow.models.set_model(MSAFlowModel())``), copied into the logged model; what that
code loads are plain files, the model's artifacts:

- ``weights``: the module's state dict as safetensors (``model.safetensors``); without
  safetensors installed, ``model.pt`` written by ``torch.save`` and read back with
  ``torch.load(weights_only=True)``;
- ``config``: the fully resolved ``RunConfig`` (``config.json``), from which
  ``tasks.train.build_model`` rebuilds the module;
- ``inputs``: what the model takes (``inputs.json``): each modality's ``seq_len`` and ``dim`` as
  the store holds them, the output kind (``head``) and the class names;
- ``standardization``, when the run standardised its features (``train.standardize``): the train
  split's per-dimension statistics (``standardization.json``).

**Inputs are raw store features.** ``predict`` applies the run's train-fit standardisation itself,
so a user feeds the features their feature store holds, as training read them from it; what the
model's forward sees is what it saw on valid and test. The input is either

- a dict of numpy arrays keyed as a batch (``tasks.data.split_to_tensors``): per modality of the
  store, ``<m>`` float32 ``(N, seq_len, dim)`` (padded past each row's length, as in the store)
  and ``<m>_len`` int64 ``(N,)``; or
- a pandas DataFrame, one row per utterance: a ``(seq_len, dim)`` array (or a flat list of
  ``seq_len * dim`` floats) in each modality's column and the length in ``<m>_len``.

A model trained with a fine-tuned text encoder (``train.text_encoder=finetune``) takes no text
features: it takes ``text_ids`` and ``text_mask``, int64 ``(N, L)`` from the encoder's tokenizer
(``tasks.text_finetune.tokenize``, ``L = train.text_max_tokens``; ``inputs.json``'s ``tokens``),
and its served copy needs that encoder's folder where it loads (the offline MiniLM, or
``train.text_encoder_path``), as ``build_model`` does.

The signature is tensor-based and named (each input's dtype and shape), so MLflow checks either
form and hands ``predict`` a dict. The output is a numpy array: ``(N,)`` float32 predictions for a
regression, ``(N, C)`` float32 logits for a classification (``inputs.json`` names the classes).
Params: ``batch_size`` (rows per forward, default 256) and ``device`` (default ``cpu``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from msaflow.modalities import MODALITIES
from msaflow.tasks.config import RunConfig

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # the models-from-code file
ARTIFACT_PATH = "model"  # the logged model's name in its run
WEIGHTS_SAFETENSORS, WEIGHTS_TORCH = "model.safetensors", "model.pt"
TOKEN_INPUTS = ("text_ids", "text_mask")  # a fine-tuned text encoder's inputs (tasks.text_finetune)
_MLFLOW_ADVICE = ("Failed to infer signature from type hint", "An input example was not provided")


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def save_weights(model: Any, folder: Path) -> Path:
    """The module's state dict as plain tensors: safetensors if installed, else ``torch.save``."""
    if _has_safetensors():
        from safetensors.torch import save_model

        path = folder / WEIGHTS_SAFETENSORS
        save_model(
            model, str(path)
        )  # drops the duplicates of tied weights, which save_file refuses
        return path
    import torch

    path = folder / WEIGHTS_TORCH
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path


def load_weights(model: Any, path: str | Path) -> None:
    """Load ``save_weights``' file into ``model`` (strict: every key, no other)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_model

        load_model(model, str(path), strict=True)
        return
    import torch

    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def model_inputs(example_batch: Mapping[str, Any], cfg: RunConfig, class_names: Any) -> dict:
    """``inputs.json``: the modalities a batch of the store holds, with their shapes."""
    return {
        "modalities": {
            m: {"seq_len": int(example_batch[m].shape[1]), "dim": int(example_batch[m].shape[2])}
            for m in MODALITIES
            if m in example_batch
        },
        # train.text_encoder=finetune: the encoder's token ids and mask instead of text features
        "tokens": int(example_batch["text_ids"].shape[1]) if "text_ids" in example_batch else None,
        "head": cfg.model_cfg.head,
        "num_classes": int(getattr(cfg.model_cfg, "num_classes", 1) or 1),
        "class_names": list(class_names) if class_names else None,
    }


def read_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """An ``inputs.json`` as read back: a model logged before the output kind was called ``head``
    names it ``task``."""
    if "head" not in inputs and "task" in inputs:
        inputs = {**{k: v for k, v in inputs.items() if k != "task"}, "head": inputs["task"]}
    return inputs


def signature(inputs: dict[str, Any]) -> Any:
    """The tensor-based signature of ``inputs``: a name, dtype and shape per input, and the
    params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    specs = []
    for m, info in inputs["modalities"].items():
        specs.append(TensorSpec(np.dtype(np.float32), (-1, info["seq_len"], info["dim"]), m))
        specs.append(TensorSpec(np.dtype(np.int64), (-1,), f"{m}_len"))
    for name in TOKEN_INPUTS if inputs.get("tokens") else ():
        specs.append(TensorSpec(np.dtype(np.int64), (-1, inputs["tokens"]), name))
    classes = inputs["num_classes"] if inputs["head"] == "classification" else 0
    out = TensorSpec(np.dtype(np.float32), (-1, classes) if classes else (-1,))
    params = ParamSchema(
        [ParamSpec("batch_size", "long", 256), ParamSpec("device", "string", "cpu")]
    )
    return ModelSignature(inputs=Schema(specs), outputs=Schema([out]), params=params)


def write_artifacts(
    folder: Path,
    model: Any,
    cfg: RunConfig,
    inputs: dict[str, Any],
    standardization: dict[str, Any] | None,
) -> dict[str, str]:
    """The model's files in ``folder``: ``{artifact name: path}`` for ``log_model``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"weights": str(save_weights(model, folder))}
    for name, content in (
        ("config", cfg.to_dict()),
        ("inputs", inputs),
        ("standardization", standardization),
    ):
        if content is not None:
            path = folder / f"{name}.json"
            path.write_text(json.dumps(content, indent=1, sort_keys=True))
            files[name] = str(path)
    return files


def pip_requirements() -> list[str]:
    """What the served model imports, pinned to this environment (given explicitly: MLflow's
    requirement inference would load the model in a subprocess, several seconds a run)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    for dist in ("mlflow", "pandas", "safetensors", "msaflow"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # a checkout that is not installed: no pin for it
            if dist != "safetensors":
                reqs.append(dist)
    return reqs


# ------------------------------------------------------------------------------------ the model


def _as_arrays(
    model_input: Any, modalities: Mapping[str, dict[str, int]], tokens: int | None = None
) -> dict[str, Any]:
    """A dict of arrays from what ``predict`` got: MLflow's enforced dict, or a DataFrame when the
    model is called unwrapped (``unwrap_python_model().predict``)."""
    if isinstance(model_input, pd.DataFrame):
        out: dict[str, np.ndarray] = {}
        for m, info in modalities.items():
            shape = (len(model_input), info["seq_len"], info["dim"])
            cells = [np.asarray(v, dtype=np.float32) for v in model_input[m]]
            out[m] = np.stack(cells).reshape(shape) if cells else np.zeros(shape, np.float32)
            out[f"{m}_len"] = np.asarray(model_input[f"{m}_len"], dtype=np.int64)
        for name in TOKEN_INPUTS if tokens else ():
            cells = [np.asarray(v, dtype=np.int64) for v in model_input[name]]
            out[name] = np.stack(cells) if cells else np.zeros((0, tokens), np.int64)
        return out
    if isinstance(model_input, Mapping):
        return dict(model_input)
    raise TypeError(
        f"expected a dict of numpy arrays or a pandas DataFrame, got {type(model_input).__name__}"
    )


class MSAFlowModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of a trained msaflow model (see the module docstring for inputs and outputs)."""

    # MLflow would check predict's input against a schema inferred from its type hint, which a
    # dict-or-DataFrame hint is not; the tensor signature checks the input instead.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from msaflow.tasks.data import Standardization
        from msaflow.tasks.train import build_model

        art = context.artifacts
        self.cfg = RunConfig.from_dict(json.loads(Path(art["config"]).read_text()))
        self.inputs = read_inputs(json.loads(Path(art["inputs"]).read_text()))
        self.standardization = (
            Standardization.from_dict(json.loads(Path(art["standardization"]).read_text()))
            if "standardization" in art
            else None
        )
        self.model = build_model(self.cfg)
        load_weights(self.model, art["weights"])
        self.model.eval()

    def predict(
        self,
        context: Any,
        model_input: dict[str, np.ndarray] | pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        import torch

        params = params or {}
        batch_size = int(params.get("batch_size") or 256)
        device = torch.device(params.get("device") or "cpu")
        modalities = self.inputs["modalities"]
        tokens = self.inputs.get("tokens")
        arrays = _as_arrays(model_input, modalities, tokens)
        features = {m: np.asarray(arrays[m], dtype=np.float32) for m in modalities}
        lengths = {m: np.asarray(arrays[f"{m}_len"], dtype=np.int64) for m in modalities}
        n = _check_shapes(features, lengths, modalities)
        token_arrays = {
            name: np.asarray(arrays[name], dtype=np.int64) for name in TOKEN_INPUTS if tokens
        }
        for name, ids in token_arrays.items():
            if ids.shape != (n, tokens):
                raise ValueError(f"{name}: expected shape ({n}, {tokens}), got {ids.shape}")
        if self.standardization is not None:  # raw store features in, as training read them
            features = self.standardization.apply_arrays(features, lengths)
        self.model.to(device)
        preds = []
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for start in range(0, n, batch_size):
                batch = {}
                for m in modalities:
                    batch[m] = torch.from_numpy(features[m][start : start + batch_size])
                    batch[f"{m}_len"] = torch.from_numpy(lengths[m][start : start + batch_size])
                for name, ids in token_arrays.items():
                    batch[name] = torch.from_numpy(ids[start : start + batch_size])
                batch = {k: v.to(device) for k, v in batch.items()}
                preds.append(self.model(batch).pred.float().cpu().numpy())
        if not preds:
            classes = self.inputs["num_classes"]
            shape = (0, classes) if self.inputs["head"] == "classification" else (0,)
            return np.zeros(shape, np.float32)
        return np.concatenate(preds)


def _check_shapes(
    features: dict[str, np.ndarray],
    lengths: dict[str, np.ndarray],
    modalities: Mapping[str, dict[str, int]],
) -> int:
    """The row count; a ValueError naming the input whose shape or lengths do not fit."""
    rows = set()
    for m, info in modalities.items():
        want = (info["seq_len"], info["dim"])
        x, n = features[m], lengths[m]
        if x.ndim != 3 or x.shape[1:] != want:
            raise ValueError(f"{m}: expected shape (N, {want[0]}, {want[1]}), got {x.shape}")
        if n.shape != (x.shape[0],):
            raise ValueError(f"{m}_len: expected shape ({x.shape[0]},), got {n.shape}")
        if len(n) and (n.min() < 0 or n.max() > want[0]):
            raise ValueError(f"{m}_len: expected lengths in [0, {want[0]}]")
        rows.add(x.shape[0])
    if len(rows) > 1:
        raise ValueError(f"inputs disagree on the number of rows: {sorted(rows)}")
    return rows.pop() if rows else 0


@contextmanager
def _mlflow_advice_muted() -> Iterator[None]:
    """MLflow's advice that does not apply here is dropped: the signature is given (not inferred
    from predict's type hint), and an input example would cost a prediction and a few MB every
    run. Its own filters re-enable those warnings, so they are caught and every other one is passed
    on."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        if not any(text in str(w.message) for text in _MLFLOW_ADVICE):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _pyfunc_kwargs(
    folder: Path,
    model: Any,
    cfg: RunConfig,
    example_batch: Mapping[str, Any],
    standardization: dict[str, Any] | None,
    class_names: Any,
) -> dict[str, Any]:
    model = model.to("cpu").eval()
    inputs = model_inputs(example_batch, cfg, class_names)
    return {
        "python_model": str(MODEL_CODE),
        "artifacts": write_artifacts(folder, model, cfg, inputs, standardization),
        "signature": signature(inputs),
        "pip_requirements": pip_requirements(),
        "metadata": {"msaflow.model": cfg.model, "msaflow.variant": cfg.variant},
    }


def save_pyfunc(
    path: str | Path,
    model: Any,
    cfg: RunConfig,
    example_batch: Mapping[str, Any],
    standardization: dict[str, Any] | None,
    class_names: Any = None,
) -> Path:
    """The pyfunc written to the folder ``path`` (no tracking server): what ``log_pyfunc`` logs.

    ``example_batch`` gives each modality's shape (a batch of the store, ``split_to_tensors``);
    ``standardization`` is ``Standardization.to_dict()`` of the run's statistics, or None."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="msaflow-pyfunc-") as tmp, _mlflow_advice_muted():
        kwargs = _pyfunc_kwargs(Path(tmp), model, cfg, example_batch, standardization, class_names)
        mlflow.pyfunc.save_model(path=str(path), **kwargs)
    return Path(path)


def log_pyfunc(
    tracking_uri: str,
    run_id: str,
    model: Any,
    cfg: RunConfig,
    example_batch: Mapping[str, Any],
    standardization: dict[str, Any] | None,
    class_names: Any = None,
) -> str:
    """Log ``model`` to run ``run_id`` as the pyfunc ``model``; returns its ``models:/`` URI."""
    import tempfile

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="msaflow-pyfunc-") as tmp, _mlflow_advice_muted():
        kwargs = _pyfunc_kwargs(Path(tmp), model, cfg, example_batch, standardization, class_names)
        with mlflow.start_run(run_id=run_id, nested=True):
            info = mlflow.pyfunc.log_model(name=ARTIFACT_PATH, **kwargs)
    return info.model_uri
