"""The ledger's file format, checked field by field: what a ledger written by another version of lsemvae, or edited
by hand, must hash to, and which histories and event logs are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lsemvae.privacy.ledger import FORMAT, VERSION, LedgerCorrupted, _append, _read_checked, _sha256, _validate_body

Q = 1 / 13


def test_the_checksum_is_pinned_to_the_canonical_json():
    """Sorted keys, no spaces, ASCII escapes: a file written by any version hashes the same."""
    body = {"b": 1, "a": [1.5, "é", None], "c": {"z": 0, "y": True}}
    assert _sha256(body) == "52d4d6c46d4c77bc9798cded3c94553f6468a3c47b55dcce78d64c78e7e0b184"


def test_a_non_finite_number_in_a_ledger_is_refused(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "sha256": "0" * 64,
                                "body": {"max_epsilon": math.nan}}))
    with pytest.raises(LedgerCorrupted, match="holds a non-finite number"):
        _read_checked(path, FORMAT, "privacy ledger", "")


@pytest.mark.parametrize("doc, problem", [
    ({"format": "other", "version": VERSION}, "is not a privacy ledger (format field 'other')"),
    ([1, 2], "is not a privacy ledger (format field None)"),
    ({"format": FORMAT, "version": 99}, f"has format version 99; this lsemvae reads version {VERSION}"),
    ({"format": FORMAT, "version": VERSION, "body": []}, "has no body"),
    ({"format": FORMAT, "version": VERSION, "body": {}, "sha256": "0" * 64},
     "fails its checksum (the body was changed after it was written)"),
])
def test_each_defect_of_the_file_is_named(tmp_path, doc, problem):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(LedgerCorrupted) as err:
        _read_checked(path, FORMAT, "privacy ledger", "FIX")
    assert str(err.value) == f"{path}: privacy ledger {problem}. The site refuses to train. FIX"


def _body(history, events=None) -> dict:
    events = events if events is not None else [{"kind": "round", "steps": sum(n for *_, n in history)}]
    return {"site": "aspire", "delta": 1e-5, "max_epsilon": 8.0, "accountant": "rdp", "resets": 0,
            "history": history, "events": events}


@pytest.mark.parametrize("entry", [[0.0, Q, 13], [-1.0, Q, 13], [1.0, 0.0, 13], [1.0, 1.5, 13], [1.0, Q, -1]])
def test_an_impossible_history_entry_is_refused(entry):
    with pytest.raises(LedgerCorrupted, match="history holds an impossible entry. The site refuses to train. Restore "
                                              "the file from a backup, or, if its spending is known and accepted as "
                                              "lost, run `lsemvae privacy reset --ledger x.json --site aspire"):
        _validate_body(Path("x.json"), _body([entry], [{"kind": "round", "steps": max(entry[2], 0)}]))


@pytest.mark.parametrize("entry", [[1.0, 1.0, 13], [1.0, Q, 0], [0.3, Q, 1]])
def test_the_edges_of_a_possible_entry_are_accepted(entry):
    """A sample rate of 1 (full batches) and an entry of 0 steps are possible; so is a small sigma."""
    assert _validate_body(Path("x.json"), _body([entry]))["history"] == [entry]


def test_steps_are_counted_from_the_last_reset_on():
    events = [{"kind": "round", "steps": 13}, {"kind": "reset"}, {"kind": "round", "steps": 26},
              {"kind": "budget"}, {"kind": "round"}]                     # a round event without steps logs none
    assert _validate_body(Path("x.json"), _body([[1.0, Q, 26]], events))
    with pytest.raises(LedgerCorrupted, match="history holds 39 steps but its round events log 26"):
        _validate_body(Path("x.json"), _body([[1.0, Q, 39]], events))


def test_a_malformed_field_is_named_with_its_error():
    body = _body([[1.0, Q, 13]])
    del body["delta"]
    with pytest.raises(LedgerCorrupted, match=r"has a missing or malformed field \(KeyError: 'delta'\)"):
        _validate_body(Path("x.json"), body)


def test_appending_merges_like_opacus_and_skips_empty_entries():
    history = [(1.0, Q, 13)]
    assert _append(history, (1.0, Q, 0)) == history and _append(history, (2.0, Q, 0)) == history
    assert _append(history, (1.0, Q, 1)) == [(1.0, Q, 14)]
    assert _append(history, (2.0, Q, 1)) == [(1.0, Q, 13), (2.0, Q, 1)]
    assert _append([], (2.0, Q, 1)) == [(2.0, Q, 1)]
