"""The typed values that travel between tasks: the dataset a run reads, and where it is tracked.

Both are frozen dataclasses defined at module level, so Prefect can hash them for its default cache
policy (JSON, else cloudpickle), rebuild them when it resolves task inputs (``dataclasses.replace``)
and persist task results that hold them (pickle). The run cache keys (``tasks.run.run_key``) read
the same fields the dicts they replace had, so the keys are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# Fields whose key in a flow's result dict (``DataRef.as_dict``) is the name callers read: the
# data kind is the manifest's ``task`` on disk and in every result a flow returned.
RESULT_KEYS = {"data_kind": "task"}


@dataclass(frozen=True)
class DataRef:
    """A resolved dataset: the store a run reads and the facts about it that the tasks need.

    ``resolve_source`` (``tasks.prepare``) makes one; ``make_folds`` derives one per fold. The
    mutable values (dicts, lists) are left out of the hash, so a ``DataRef`` is hashable all the
    same.
    """

    path: str  # the store folder (str: it goes into JSON specs and MLflow params as it is)
    name: str  # the manifest's dataset name
    data_kind: str  # the dataset's kind (its manifest's "task"): sentiment | emotion | depression
    manifest_hash: str  # the store's content hash: what caches and run keys are keyed on
    input_spec: dict[str, Any] = field(hash=False)  # models.base.InputSpec fields
    class_names: list[str] | None = field(hash=False)  # classification stores' label names
    source: str  # where the store came from (sim, mmsa, mult, extract, ...)
    oracle: dict[str, Any] | None = field(hash=False)  # a simulation's best achievable figures
    extraction: dict[str, Any] | None = field(default=None, hash=False)  # --data x.csv: summary
    fold: int | None = None  # the fold number of a k-fold store (``make_folds``)

    @classmethod
    def from_manifest(cls, path: str, manifest: Any) -> DataRef:
        """The reference to the store at ``path`` whose manifest is ``manifest``."""
        return cls(
            path=str(path),
            name=manifest.name,
            data_kind=manifest.data_kind,
            manifest_hash=manifest.content_hash,
            input_spec=manifest.input_spec(),
            class_names=manifest.class_names,
            source=manifest.source,
            oracle=manifest.oracle,
        )

    def with_extraction(self, extraction: dict[str, Any]) -> DataRef:
        """This reference with what extraction did (``--data utterances.csv``)."""
        return replace(self, extraction=extraction)

    def as_dict(self) -> dict[str, Any]:
        """The flows' result ``dataset``: the dict the CLI, the API and callers of a flow read.

        ``extraction`` and ``fold`` appear only when set, as in the dicts this class replaced;
        ``data_kind`` keeps its key there, ``task`` (``RESULT_KEYS``).
        """
        out = {RESULT_KEYS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}
        for optional in ("extraction", "fold"):
            if out[optional] is None:
                del out[optional]
        return out


@dataclass(frozen=True)
class Tracking:
    """The MLflow tracking target of a flow run: the store and the experiment's id (and name).

    ``uri`` and ``experiment_id`` are part of every run key: the same config tracked elsewhere is
    another run.
    """

    uri: str
    experiment_id: str
    experiment: str = ""  # the experiment's name (the reproduce report looks it up by name)
