"""``DataRef`` and ``Tracking``: what Prefect does with a task's inputs and results works on them,
and the run key reads the same values the dicts they replaced held."""

from __future__ import annotations

import hashlib
import pickle

from prefect.serializers import PickleSerializer
from prefect.utilities.collections import visit_collection
from prefect.utilities.hashing import hash_objects

from msaflow.tasks.config import resolve_run_config
from msaflow.tasks.policy import code_version
from msaflow.tasks.prepare import prepare_store
from msaflow.tasks.refs import DataRef, Tracking
from msaflow.tasks.run import eval_cache_key, run_key, train_cache_key


def test_data_ref_round_trips_through_prefect(tiny_sim):
    ref = prepare_store(str(tiny_sim))
    assert ref.path == str(tiny_sim) and isinstance(ref, DataRef)
    assert pickle.loads(pickle.dumps(ref)) == ref  # persisted results (pickle)
    serializer = PickleSerializer()
    assert serializer.loads(serializer.dumps(ref)) == ref
    assert hash_objects(ref) == hash_objects(pickle.loads(pickle.dumps(ref)))  # default cache key
    assert hash_objects(ref) is not None and hash(ref) == hash(pickle.loads(pickle.dumps(ref)))
    assert visit_collection(ref, lambda x: x, return_data=True) == ref  # input resolution


def test_as_dict_is_the_dict_the_flows_returned(tiny_sim):
    ref = prepare_store(str(tiny_sim))
    assert list(ref.as_dict()) == [
        "path",
        "name",
        "task",
        "manifest_hash",
        "input_spec",
        "class_names",
        "source",
        "oracle",
    ]
    extracted = ref.with_extraction({"manifest": "m.csv", "store": ref.path, "skipped": True})
    assert list(extracted.as_dict())[-1] == "extraction"
    assert extracted.as_dict()["extraction"]["skipped"] is True


def test_run_key_reads_the_same_values_as_before(tiny_sim):
    ref = prepare_store(str(tiny_sim))
    tracking = Tracking(uri="sqlite:///x.db", experiment_id="7", experiment="e")
    cfg = resolve_run_config(
        "mmafnet",
        None,
        "quick",
        input_spec=ref.input_spec,
        data_kind=ref.data_kind,
        class_names=ref.class_names,
    )
    blob = "|".join([ref.manifest_hash, cfg.fingerprint(), code_version(), "sqlite:///x.db", "7"])
    key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    assert run_key(cfg, ref, tracking) == key
    params = {"cfg": cfg, "data_ref": ref, "tracking": tracking, "cell": "full"}
    assert train_cache_key(None, params) == f"train-{key}-full"
    assert eval_cache_key(None, params) == f"evaluate-{key}-full"
