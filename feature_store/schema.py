"""The on-disk dataset: ``manifest.json`` plus one Parquet file per split.

Each Parquet row is one utterance: ``id``, ``video_id``, ``clip_id``, optional ``text`` and
``subject``, ``label`` (float32), optional ``class_label`` (int64), one column per modality
(``text_feat``, ``audio_feat``, ``vision_feat``) holding the (T, d) float32 sequence as a nested
Arrow fixed-size binary value of T*d little-endian float32 (the shape is in the field metadata and
the manifest), and per-modality lengths (``text_len`` ...).

The format lives in three modules, by job, and this one re-exports their names:

- ``feature_store.datatypes``: ``SplitData``, ``Manifest`` and ``read_manifest``, the format's
  constants, and the checks a split passes before it is written;
- ``feature_store.parquet_io``: ``write_dataset``, ``load_split``, ``load_dataset``,
  ``load_split_shared``, ``validate_dataset`` and the file digests;
- ``feature_store.store_safety``: what a write may replace or delete (``store_file_names``,
  ``check_target``, ``clean_stale_temporaries``).

A test that patches a name patches it in its home module (the re-exported name is a copy).
"""

from __future__ import annotations

from msaflow.errors import DataError
from msaflow.feature_store.datatypes import (
    DATA_KINDS,
    FEATURE_ABS_MAX,
    LABEL_KINDS,
    MANIFEST,
    SCHEMA_VERSION,
    SPLITS,
    Manifest,
    SplitData,
    check_finite,
    check_split,
    check_splits,
    read_manifest,
)
from msaflow.feature_store.parquet_io import (
    ROW_GROUP_BYTES,
    file_crc32,
    file_sha256,
    load_dataset,
    load_split,
    load_split_shared,
    validate_dataset,
    write_dataset,
)
from msaflow.feature_store.store_safety import (
    STALE_AFTER_S,
    _writer_tag,
    check_target,
    clean_stale_temporaries,
    store_file_names,
)
from msaflow.modalities import MODALITIES

__all__ = [
    "FEATURE_ABS_MAX",
    "LABEL_KINDS",
    "MANIFEST",
    "MODALITIES",
    "ROW_GROUP_BYTES",
    "SCHEMA_VERSION",
    "SPLITS",
    "STALE_AFTER_S",
    "DATA_KINDS",
    "DataError",
    "Manifest",
    "SplitData",
    "_writer_tag",
    "check_finite",
    "check_split",
    "check_splits",
    "check_target",
    "clean_stale_temporaries",
    "file_crc32",
    "file_sha256",
    "load_dataset",
    "load_split",
    "load_split_shared",
    "read_manifest",
    "store_file_names",
    "validate_dataset",
    "write_dataset",
]
