"""The ledger's edges, each pinned where a mutation of it went unnoticed: the budget boundary, the operator's
reason, where anchors live, what a reset carries over, what a missing ledger's message tells the operator."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lsemvae.privacy import LedgerMismatch, LedgerMissing, PrivacyLedger
from lsemvae.privacy.dp import epsilon_of
from lsemvae.privacy.ledger import ANCHOR_DIR_ENV, LedgerError, default_anchor_dir

DELTA = 1e-5
Q = 1 / 13


@pytest.fixture
def paths(tmp_path: Path):
    return tmp_path / "state" / "aspire" / "privacy-ledger.json", tmp_path / "anchors"


def new_ledger(paths, **kw) -> PrivacyLedger:
    kw = {"delta": DELTA, "max_epsilon": 8.0, **kw}
    return PrivacyLedger.open_or_create(paths[0], site="aspire", anchor_dir=paths[1], **kw)


def test_a_round_that_lands_exactly_on_the_budget_may_train(paths):
    ledger = new_ledger(paths)
    projected = ledger.projected_epsilon(noise_multiplier=1.0, sample_rate=Q, steps=13)
    ledger.set_budget(max_epsilon=projected, reason="budget set to exactly one round")
    assert ledger.check_can_train(noise_multiplier=1.0, sample_rate=Q, steps=13) == projected


def test_projected_epsilon_uses_the_ledgers_own_accountant(paths):
    ledger = new_ledger(paths, accountant="prv")
    ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    projected = ledger.projected_epsilon(noise_multiplier=1.0, sample_rate=Q, steps=13)
    assert projected == pytest.approx(epsilon_of([(1.0, Q, 26)], delta=DELTA, accountant="prv"), rel=1e-9)
    assert projected < epsilon_of([(1.0, Q, 26)], delta=DELTA, accountant="rdp")      # PRV is the tighter one


@pytest.mark.parametrize("reason, ok", [("abcd", False), ("  abcd  ", False), (None, False), ("abcde", True)])
def test_an_operator_command_needs_a_reason_of_five_characters(paths, reason, ok):
    ledger = new_ledger(paths)
    if ok:
        ledger.set_budget(max_epsilon=4.0, reason=reason)
        assert ledger.events[-1] | {"time": None, "user": None} == {"kind": "budget", "from": 8.0, "to": 4.0,
                                                                    "reason": reason, "time": None, "user": None}
    else:
        with pytest.raises(LedgerError, match="a reason is required"):
            ledger.set_budget(max_epsilon=4.0, reason=reason)
        assert ledger.max_epsilon == 8.0


def test_anchors_live_where_the_environment_says_else_in_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ANCHOR_DIR_ENV, raising=False)
    assert default_anchor_dir() == tmp_path / "home" / ".lsemvae" / "ledger-anchors"
    monkeypatch.setenv(ANCHOR_DIR_ENV, "~/anchors-volume")
    assert default_anchor_dir() == tmp_path / "home" / "anchors-volume"


def test_a_re_anchor_logs_who_why_and_the_epsilon_it_vouched_for(paths, caplog):
    ledger = new_ledger(paths)
    eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    unanchored = PrivacyLedger.open_unanchored(paths[0], site="aspire", anchor_dir=paths[1])
    with caplog.at_level(logging.WARNING, logger="lsemvae.privacy.ledger"):
        unanchored.re_anchor(reason="anchor copied to the new volume")
    event = unanchored.events[-1]
    assert event["kind"] == "re-anchored" and event["reason"] == "anchor copied to the new volume" and event["user"]
    assert event["epsilon"] == pytest.approx(eps) and event["previous_anchor"] is True
    assert "re-anchored" in caplog.text and "anchor copied to the new volume" in caplog.text and f"{eps:.4f}" in caplog.text


def test_open_unanchored_still_checks_whose_ledger_it_is(paths):
    new_ledger(paths)
    with pytest.raises(LedgerMismatch, match="belongs to site 'aspire', not 'other'"):
        PrivacyLedger.open_unanchored(paths[0], site="other", anchor_dir=paths[1])
    with pytest.raises(LedgerError, match="site name"):
        PrivacyLedger.open_unanchored(paths[0], site="../aspire", anchor_dir=paths[1])


def test_a_reset_carries_the_settings_over_and_counts_itself(paths):
    ledger = new_ledger(paths, delta=1e-6, max_epsilon=3.0, accountant="prv")
    eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    first = PrivacyLedger.reset(paths[0], site="aspire", reason="new extract, DPO approved", anchor_dir=paths[1])
    assert (first.delta, first.max_epsilon, first.accountant, first.resets) == (1e-6, 3.0, "prv", 1)
    previous = first.events[0]["previous"]
    assert previous["epsilon"] == pytest.approx(eps) and previous["history"] == [[1.0, Q, 13]]
    assert Path(previous["kept_as"]).is_file()
    second = PrivacyLedger.reset(paths[0], site="aspire", reason="second extract, DPO approved", anchor_dir=paths[1],
                                 max_epsilon=2.0)
    assert (second.max_epsilon, second.delta, second.resets) == (2.0, 1e-6, 2)


def test_a_reset_with_nothing_to_take_settings_from_asks_for_them(paths):
    with pytest.raises(LedgerError, match="give --delta and --max-epsilon"):
        PrivacyLedger.reset(paths[0], site="aspire", reason="first ledger by hand", anchor_dir=paths[1])
    made = PrivacyLedger.reset(paths[0], site="aspire", reason="first ledger by hand", anchor_dir=paths[1],
                               delta=DELTA, max_epsilon=5.0)
    assert (made.delta, made.max_epsilon, made.accountant, made.resets) == (DELTA, 5.0, "rdp", 1)


def test_a_missing_ledger_says_what_was_spent_where_it_was_kept_and_what_to_do(paths, tmp_path):
    ledger = new_ledger(paths)
    eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    paths[0].unlink()
    moved = tmp_path / "elsewhere" / "privacy-ledger.json"
    with pytest.raises(LedgerMissing) as err:
        PrivacyLedger.open_or_create(moved, site="aspire", delta=DELTA, max_epsilon=8.0, anchor_dir=paths[1])
    msg = str(err.value)
    assert f"epsilon {eps:.3f} already spent (13 steps)" in msg and str(paths[1] / "aspire.json") in msg
    assert f"It was last kept at {paths[0]}" in msg and f"lsemvae privacy reset --ledger {moved}" in msg
    with pytest.raises(LedgerMissing) as same:                          # where it was: no "last kept" hint
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    assert "last kept" not in str(same.value)
