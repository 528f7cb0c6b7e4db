"""``bench/real_mosi.py`` at toy scale: the table, the per-seed JSON, ``--resume`` and bad input.

The real pickle is not needed: ``--store`` reuses an existing store (here a tiny simulated one), so
one earlyfusion run of one epoch exercises the whole script in about a second.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from msaflow.feature_store import synthesize

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "bench_real_mosi", ROOT / "bench" / "real_mosi.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("real-mosi") / "store"
    synthesize("mosi", path, seed=0, scale=0.01)
    return path


def test_table_json_and_resume(store, tmp_path, capsys):
    script = _script()
    pkl = tmp_path / "stand-in.pkl"  # must exist; the store is reused, so it is never read
    pkl.write_bytes(b"")
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    args = [
        "--pkl",
        str(pkl),
        "--store",
        str(store),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--families",
        "earlyfusion",
        "--md",
        str(md),
        "--json",
        str(js),
    ]

    assert script.main(args) == 0
    out = capsys.readouterr()
    data = json.loads(js.read_text())
    assert data["finished"] and len(data["runs"]) == 1
    run = data["runs"][0]
    assert (run["family"], run["variant"], run["seed"], run["epochs"]) == (
        "earlyfusion",
        "default",
        1,
        1,
    )
    assert {k for k, _, _ in script.METRICS} <= set(run)  # every table column is a real test/ key
    assert run["select_metric"] == "valid/mae"
    text = md.read_text()
    assert "| early fusion (concat + MLP) | 1/1 |" in text and "complete: 1/1 runs" in text
    assert "preset: `quick` for every family, 1 epochs" in text
    assert "1 runs to train" in out.err
    assert set(data["valid_leak_check"]) == {"text", "audio", "vision"}
    assert "### Caveat: valid is not held out" in text

    assert script.main([*args, "--resume"]) == 0  # same config: nothing retrained
    assert "0 runs to train (1 kept" in capsys.readouterr().err
    again = json.loads(js.read_text())
    assert again["runs"] == data["runs"] and again["runs_trained"] == 0
    assert [h["runs_trained"] for h in again["history"]] == [
        1
    ]  # the first invocation is remembered


def test_mean_std_skips_nonfinite_and_says_so():
    script = _script()
    assert script.mean_std([0.5, 0.7], 100.0) == "60.0 ± 14.1"
    assert script.mean_std([0.8, float("nan")], 1.0) == "0.800 ± 0.000 (1/2 finite)"
    assert script.mean_std([None], 1.0) == "n/a"


def test_missing_pickle_skips_and_unknown_family_is_exit_2(tmp_path, capsys):
    script = _script()
    assert script.main(["--pkl", str(tmp_path / "absent.pkl")]) == 0
    assert "SKIP" in capsys.readouterr().out
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(b"")
    assert script.main(["--pkl", str(pkl), "--families", "nosuch"]) == 2
    assert "--families: unknown ['nosuch']" in capsys.readouterr().err
