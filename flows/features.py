"""The ``features`` flow: manifest -> text / audio / visual extraction -> word alignment -> store.

Flows only wire tasks: the tasks, and the order they run in (``extract_features``), live in
``tasks/extract.py``, so that a flow that trains on a raw manifest (``--data utterances.csv``) runs
the same tasks inside its own flow run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from msaflow.tasks.extract import extract_features


@flow(name="features")
def features(
    manifest: str,
    out: str,
    text_model: str | None = None,
    max_words: int = 50,
    text_ids: bool = False,
    f0: str = "pyin",
    visual_kind: str = "auto",
    batch_size: int = 64,
    label_range: tuple[float, float] = (-3.0, 3.0),
    name: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    force: bool = False,
    task: str = "sentiment",  # the data kind; a flow parameter keeps its user-facing name
    class_names: list[str] | None = None,
    source_failures: list[dict] | None = None,
) -> dict[str, Any]:
    """Extract word-aligned features for every utterance in ``manifest`` and write a store at
    ``out`` (``tasks.extract.extract_features``, which documents the arguments and the result).
    """
    return extract_features(
        manifest=manifest,
        out=out,
        text_model=text_model,
        max_words=max_words,
        text_ids=text_ids,
        f0=f0,
        visual_kind=visual_kind,
        batch_size=batch_size,
        label_range=label_range,
        name=name,
        cache_dir=cache_dir,
        progress=progress,
        force=force,
        data_kind=task,
        class_names=class_names,
        source_failures=source_failures,
    )
