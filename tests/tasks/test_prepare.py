"""``--data`` is parsed once (``parse_data``) for the check, the preparation and the routing."""

import pytest

from msaflow.errors import DataError
from msaflow.tasks.prepare import check_data, parse_data


def test_every_kind_of_data_argument(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "utterances.CSV").write_text("id\n")
    (tmp_path / "aligned.pkl").write_bytes(b"")
    assert parse_data(None).kind == "sim" and parse_data(None).profile == "mosi"
    assert parse_data(None, default_profile="iemocap").profile == "iemocap"
    assert parse_data("sim-cmdc").profile == "cmdc"
    assert parse_data(str(tmp_path / "store")).kind == "store"
    assert parse_data(str(tmp_path / "utterances.CSV")).kind == "raw"
    assert parse_data(str(tmp_path / "aligned.pkl")).kind == "pickle"
    missing = parse_data(str(tmp_path / "nope.csv"))
    assert missing.kind == "missing" and missing.path == tmp_path / "nope.csv"


def test_the_check_names_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="sim-<profile> with a profile among"):
        check_data("sim-nope")
    with pytest.raises(DataError, match="--scale"):
        check_data("sim-mosi", scale=1.5)
    with pytest.raises(DataError, match="a feature-store directory"):
        check_data(str(tmp_path / "nope.csv"))
    (tmp_path / "a.pkl").write_bytes(b"")
    with pytest.raises(DataError, match="--format"):
        check_data(str(tmp_path / "a.pkl"), data_format="nope")
