"""msaflow: reproduce, ablate, tune and compare multimodal sentiment analysis models.

``import msaflow`` is cheap and changes nothing: the Python API (``msaflow.run``, ``reproduce``,
``tune``, ``load_dataset`` and their result types) lives in ``msaflow.api`` and is imported on first
use, which applies msaflow's settings (see ``msaflow.api``). The package itself is the ground floor
of the layers: nothing here imports the project at import time.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# name -> the API module's attribute; imported lazily by ``__getattr__``
_API = (
    "run",
    "reproduce",
    "tune",
    "load_dataset",
    "RunResult",
    "RunRow",
    "Failure",
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
