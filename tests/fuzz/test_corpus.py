"""Replays every fuzz finding in ``tests/fuzz/corpus/<reader>/`` (issue 20): each must now be a
clean error or a success. Entries whose code belongs to another owner and is not fixed yet are
marked ``reported`` in their ``finding.json`` and run as expected failures (they turn into xpass
once fixed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_harness as fh  # noqa: E402
from fuzz_targets import TARGETS  # noqa: E402

ENTRIES = fh.corpus_entries()


def _param(d: Path):
    info = json.loads((d / "finding.json").read_text())
    marks = []
    if info["status"] == "reported":
        marks.append(pytest.mark.xfail(reason=f"reported, not fixed: {info['note']}", strict=False))
    return pytest.param(d, info, id=f"{d.parent.name}/{d.name}", marks=marks)


@pytest.mark.parametrize(("entry", "info"), [_param(d) for d in ENTRIES])
def test_corpus_entry_is_clean(entry: Path, info: dict, tmp_path: Path) -> None:
    target = TARGETS[info["reader"]]
    case = fh.read_case(entry)
    if fh._isolated_kind(
        info["signature"]
    ):  # a hang or memory blow-up: in a child that can be killed
        result = fh.check_isolated(target, case, tmp_path / "iso", timeout=2.0, hard_timeout=6.0)
    else:
        fh.warm(target, tmp_path / "warm")
        result = fh.check(target, case, fh.Sandbox(tmp_path / "sb"), timeout=10.0)
    assert result.status in ("ok", "clean"), (
        f"{info['signature']} is back: {result.signature} {result.detail}"
    )


def test_corpus_is_small_and_well_formed() -> None:
    assert fh.corpus_bytes() < 1 << 20
    for d in ENTRIES:
        info = json.loads((d / "finding.json").read_text())
        assert info["reader"] == d.parent.name and info["reader"] in TARGETS
        assert info["status"] in ("fixed", "reported") and d.name == fh.finding_id(
            info["signature"]
        )
        assert fh.read_case(d), f"{d} holds no input"


def test_cli_replays_fixed_ingest_and_validate_findings(tmp_path: Path) -> None:
    """Two fixed findings through the real ``msaflow`` CLI: exit 2, one line naming the file, no
    traceback."""
    picked = {}
    for d in ENTRIES:
        info = json.loads((d / "finding.json").read_text())
        if (
            info["status"] == "fixed"
            and TARGETS[info["reader"]].cli
            and info["reader"] not in picked
        ):
            picked[info["reader"]] = d
    assert picked, "the corpus should hold fixed pickle/store findings"
    for reader, d in picked.items():
        r = fh.check_cli(TARGETS[reader], fh.read_case(d), fh.Sandbox(tmp_path / reader))
        assert r.status in ("ok", "clean"), f"{reader}/{d.name}: {r.signature} {r.detail}"
