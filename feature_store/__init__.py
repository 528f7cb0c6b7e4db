"""The feature store: every flow reads features through this package.

A dataset is a directory holding ``manifest.json`` and one Parquet file per split (see
``feature_store.schema``). ``ingest`` reads MMSA/MulT pickles safely, ``synthesize`` writes the
simulation benchmark, ``load_dataset`` returns numpy arrays ready for ``tasks.data``.
"""

from msaflow.errors import DataError
from msaflow.feature_store.datatypes import SPLITS, Manifest, SplitData, check_splits, read_manifest
from msaflow.feature_store.ingest import FORMATS, ingest, safe_load_pickle
from msaflow.feature_store.parquet_io import (
    load_dataset,
    load_split,
    load_split_shared,
    validate_dataset,
    write_dataset,
)
from msaflow.feature_store.sim import SIM_PROFILES, synthesize
from msaflow.feature_store.store_safety import check_target, clean_stale_temporaries
from msaflow.modalities import MODALITIES

__all__ = [
    "FORMATS",
    "MODALITIES",
    "SIM_PROFILES",
    "SPLITS",
    "DataError",
    "Manifest",
    "SplitData",
    "check_splits",
    "check_target",
    "clean_stale_temporaries",
    "ingest",
    "load_dataset",
    "load_split",
    "load_split_shared",
    "read_manifest",
    "safe_load_pickle",
    "synthesize",
    "validate_dataset",
    "write_dataset",
]
