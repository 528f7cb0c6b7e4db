"""A short seeded fuzz campaign per reader in the fast suite (issue 20); the long one is
``bench/fuzz/run.py`` (``make fuzz``). Any finding fails, except those already in the corpus as
``reported`` to the reader's owner (replayed as expected failures by ``test_corpus.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_harness as fh  # noqa: E402

# Inputs per reader: a couple of seconds each on a slow shared machine.
SHORT = {
    "pickle": 80,
    "store": 50,
    "manifest_csv": 30,
    "facial_csv": 20,
    "wav": 30,
    "params_yaml": 15,
    "space_yaml": 15,
    "checkpoint": 20,
    "best_yaml": 10,
}


def _reported(reader: str) -> set[str]:
    return {
        json.loads((d / "finding.json").read_text())["signature"]
        for d in fh.corpus_entries()
        if d.parent.name == reader
        and json.loads((d / "finding.json").read_text())["status"] == "reported"
    }


@pytest.mark.parametrize("reader", list(SHORT))
def test_short_campaign_has_no_new_findings(reader: str, tmp_path: Path) -> None:
    camp = fh.run_campaign(reader, SHORT[reader], seed=20, isolate=False, root=tmp_path)
    assert camp.counts["ok"] + camp.counts["clean"] + camp.counts["finding"] == SHORT[reader]
    new = {s: f for s, f in camp.findings.items() if s not in _reported(reader)}
    assert not new, (
        f"new findings (repeat: python bench/fuzz/run.py --reader {reader} --inputs "
        f"{SHORT[reader]} --seed 20 --in-process --save): {new}"
    )


def test_seeds_are_accepted(tmp_path: Path) -> None:
    """The valid inputs every mutation starts from load without error (else the campaign tests
    nothing)."""
    from fuzz_targets import TARGETS

    for name in ("pickle", "store"):
        target = TARGETS[name]
        for i, case in enumerate(target.seeds()):
            r = fh.check(target, case, fh.Sandbox(tmp_path / f"{name}{i}"))
            assert r.status == "ok", (name, i, r)
