"""msaflow: reproduce, ablate, tune and compare multimodal sentiment analysis models.

``import msaflow`` is cheap and changes nothing: the Python API (``msaflow.run``, ``reproduce``,
``tune``, ``load_dataset`` and their result types) lives in ``msaflow.api`` and is imported on first
use, which applies msaflow's settings (see ``msaflow.api``). The package itself is the ground floor
of the layers: nothing here imports the project at import time.

``msaflow.models``, ``msaflow.tasks``, ``msaflow.flows`` and ``msaflow.feature_store`` live at the
top of the repository (``models/`` ...). The wheel installs them inside this package
(``pyproject.toml``'s ``package-dir``); in a source checkout, this package's path also holds the
checkout's root, so the same names import the same files without installing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

SUBPACKAGES = ("models", "tasks", "flows", "feature_store")  # <root>/<name> in a checkout


def _checkout_root() -> Path | None:
    """The repository root when this package runs from a source checkout, else None."""
    here = Path(__file__).resolve().parent
    if (here / "models").exists() or not (here.parent / "models" / "__init__.py").is_file():
        return None  # installed: msaflow/models/ is inside the package
    return here.parent


if (_root := _checkout_root()) is not None and str(_root) not in __path__:
    __path__.append(str(_root))  # msaflow.models -> <root>/models/ ...
del _root

# name -> the API module's attribute; imported lazily by ``__getattr__``
_API = (
    "run",
    "reproduce",
    "tune",
    "load_dataset",
    "RunResult",
    "RunRow",
    "Failure",
    "Registered",
    "ReproduceResult",
    "TuneResult",
    "Trial",
    "Dataset",
    "DatasetRef",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """``msaflow.run`` ...: the API, imported on first use (PEP 562)."""
    if name in _API:
        from msaflow import api

        value = getattr(api, name)
        globals()[name] = value  # the next access does not come here
        return value
    raise AttributeError(f"module 'msaflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
