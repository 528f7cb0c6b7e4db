"""Model families. Each model file defines its config, modules and a ``SPEC``; this is the only
list."""

from __future__ import annotations

from models.base import MODALITIES, InputSpec, ModelOutput, ModelSpec, MSAModel


def registry() -> dict[str, ModelSpec]:
    """Imported lazily so that ``import models`` stays cheap."""
    from models import earlyfusion, mmafnet, mmcl, unimodal

    return {spec.name: spec for spec in (mmafnet.SPEC, mmcl.SPEC, unimodal.SPEC, earlyfusion.SPEC)}


def get_spec(name: str) -> ModelSpec:
    specs = registry()
    if name not in specs:
        raise KeyError(f"unknown model {name!r}; expected one of {sorted(specs)}")
    return specs[name]


__all__ = [
    "MODALITIES",
    "InputSpec",
    "ModelOutput",
    "ModelSpec",
    "MSAModel",
    "registry",
    "get_spec",
]
