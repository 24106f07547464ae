"""The ledger's edges, each pinned where a mutation of it went unnoticed: the budget boundary, the operator's
reason, where anchors live, what a reset carries over, what a missing ledger's message tells the operator."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lsemvae.privacy import LedgerMismatch, LedgerMissing, PrivacyLedger
from lsemvae.privacy.dp import epsilon_of
from lsemvae.privacy.dp import BudgetExhausted
from lsemvae.privacy.ledger import ANCHOR_DIR_ENV, LedgerError, _user, default_anchor_dir

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
    with pytest.raises(BudgetExhausted) as err:                         # one step more does not fit
        ledger.check_can_train(noise_multiplier=1.0, sample_rate=Q, steps=14)
    assert ("This site's data has given what its budget allows: leave it out of further rounds. Only if the data "
            "custodian approves a larger budget, raise it with `lsemvae privacy set-budget` (logged); fewer local "
            "steps or a larger noise multiplier make a round cheaper.") in str(err.value)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_budget_must_be_a_positive_number(paths, bad):
    ledger = new_ledger(paths)
    with pytest.raises(LedgerError, match=f"max_epsilon must be a positive number \\(got {bad}\\)"):
        ledger.set_budget(max_epsilon=bad, reason="testing the bounds")
    ledger.set_budget(max_epsilon=0.5, reason="a small budget is a budget")
    assert ledger.max_epsilon == 0.5


def test_budget_changes_resets_and_re_anchors_are_logged_with_who_and_why(paths, caplog, monkeypatch):
    """Under a local time zone 5:30 away from UTC, so that the kept file's UTC name is checked."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")                              # local time 5:30 away from UTC
    time.tzset()
    try:
        ledger = new_ledger(paths)
        user = _user()
        with caplog.at_level(logging.WARNING, logger="lsemvae.privacy.ledger"):
            ledger.set_budget(max_epsilon=6.0, reason="DPO lowered the budget")
            eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
            PrivacyLedger.reset(paths[0], site="aspire", reason="new extract approved", anchor_dir=paths[1])
        kept = next(paths[0].parent.glob("privacy-ledger.json.replaced-*"))
        stamp = datetime.strptime(kept.name.removeprefix("privacy-ledger.json.replaced-"), "%Y%m%dT%H%M%S%fZ")
        assert abs(stamp.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)) < timedelta(minutes=5)   # UTC
        assert [r.getMessage() for r in caplog.records] == [
            "site 'aspire': privacy budget changed 8 -> 6 (DPO lowered the budget)",
            f"site 'aspire': privacy ledger RESET by {user} (new extract approved); previous epsilon {eps}; "
            f"new ledger {paths[0]}"]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_summary_a_site_reports(paths):
    ledger = new_ledger(paths)
    eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    ledger.set_budget(max_epsilon=2.0, reason="lowered below what is spent")
    summary = ledger.summary()
    assert summary | {"events": None} == {
        "site": "aspire", "ledger": str(paths[0]), "accountant": "rdp", "delta": DELTA, "max_epsilon": 2.0,
        "epsilon": eps, "remaining": 0.0, "total_steps": 13, "rounds": 1, "resets": 0,
        "history": [[1.0, Q, 13]], "events": None}
    assert [e["kind"] for e in summary["events"]] == ["created", "round", "budget"]


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
        with pytest.raises(LedgerError, match="^a reason is required"):
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
    assert caplog.records[-1].getMessage() == (f"site 'aspire': privacy ledger re-anchored by {_user()} "
                                                f"(anchor copied to the new volume) at epsilon {eps:.4f}")


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
    assert f"It was last kept at {paths[0]}" in msg and f"lsemvae privacy reset --ledger {moved} --site aspire" in msg
    with pytest.raises(LedgerMissing) as same:                          # where it was: no "last kept" hint
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    assert "the site refuses to train. Restore the file" in str(same.value) and "--site aspire" in str(same.value)


def test_opening_where_there_is_no_ledger_and_no_anchor(paths, monkeypatch):
    with pytest.raises(LedgerError, match="no privacy ledger here for site 'aspire'$"):
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    with pytest.raises(LedgerError, match="no privacy ledger here$"):
        PrivacyLedger.open(paths[0], anchor_dir=paths[1])
    monkeypatch.setenv(ANCHOR_DIR_ENV, str(paths[1]))                   # no anchor_dir: the default one
    new_ledger(paths).record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    assert PrivacyLedger.open(paths[0], site="aspire").total_steps == 13


def test_a_damaged_anchor_does_not_stop_a_re_anchor_or_a_reset(paths):
    ledger = new_ledger(paths)
    ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    (paths[1] / "aspire.json").write_text("{not json")
    unanchored = PrivacyLedger.open_unanchored(paths[0], site="aspire", anchor_dir=paths[1])
    unanchored.re_anchor(reason="anchor disk was damaged")
    assert unanchored.events[-1]["previous_anchor"] is False
    (paths[1] / "aspire.json").write_text("{not json")
    fresh = PrivacyLedger.reset(paths[0], site="aspire", reason="start again, DPO approved", anchor_dir=paths[1])
    assert fresh.resets == 1 and fresh.max_epsilon == 8.0                # settings from the readable ledger


def test_a_reset_counts_on_from_whichever_record_survives(paths):
    new_ledger(paths)
    for _ in range(2):
        PrivacyLedger.reset(paths[0], site="aspire", reason="reset for the test", anchor_dir=paths[1])
    (paths[1] / "aspire.json").unlink()                                  # only the ledger remembers 2 resets
    assert PrivacyLedger.reset(paths[0], site="aspire", reason="reset for the test", anchor_dir=paths[1]).resets == 3
    paths[0].unlink()                                                    # only the anchor remembers 3
    assert PrivacyLedger.reset(paths[0], site="aspire", reason="reset for the test", anchor_dir=paths[1]).resets == 4


def test_a_reset_of_an_unreadable_ledger_says_why_and_takes_settings_given(paths):
    new_ledger(paths, accountant="rdp")
    paths[0].write_text("garbage")
    fresh = PrivacyLedger.reset(paths[0], site="aspire", reason="disk error, custodian approved", anchor_dir=paths[1],
                                accountant="prv", delta=1e-6)
    previous = fresh.events[0]["previous"]
    assert previous["unreadable"].startswith(f"{paths[0]}: privacy ledger is not valid JSON (truncated or overwritten?")
    assert previous["unreadable"].endswith("The site refuses to train. ")
    assert (fresh.accountant, fresh.delta, fresh.max_epsilon) == ("prv", 1e-6, 8.0)   # the budget from the anchor
    with pytest.raises(LedgerError, match="give --delta and --max-epsilon"):
        PrivacyLedger.reset(paths[0].with_name("other.json"), site="nobody", reason="only a delta given",
                            anchor_dir=paths[1], delta=1e-5)


@pytest.mark.parametrize("delta, budget", [(0.0, 8.0), (1.0, 8.0), (1e-5, 0.0), (1e-5, -1.0), (1e-5, float("inf")),
                                           (1e-5, float("nan"))])
def test_a_new_ledger_needs_a_delta_in_0_1_and_a_positive_finite_budget(paths, delta, budget):
    with pytest.raises(LedgerError, match=f"site 'aspire': need 0 < delta < 1 and max_epsilon > 0 \\(got delta={delta}"):
        new_ledger(paths, delta=delta, max_epsilon=budget)
    assert new_ledger(paths, delta=0.999, max_epsilon=0.5).max_epsilon == 0.5


def _rewrite(path: Path, change) -> None:
    """Edit a ledger or anchor file the way a forger would: the body changed, its checksum recomputed."""
    import json

    from lsemvae.privacy.ledger import _sha256

    doc = json.loads(path.read_text())
    change(doc["body"])
    doc["sha256"] = _sha256(doc["body"])
    path.write_text(json.dumps(doc))


def test_an_anchor_from_before_anchors_held_the_history_still_catches_an_edit(paths):
    """Such an anchor holds the history's digest only: a history edited to other noise with the same steps differs."""
    from lsemvae.privacy.ledger import LedgerCorrupted

    ledger = new_ledger(paths)
    ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    _rewrite(paths[1] / "aspire.json", lambda body: body.pop("history"))
    assert PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1]).total_steps == 13   # vouched for
    _rewrite(paths[0], lambda body: body.update(history=[[50.0, Q, 13]]))
    with pytest.raises(LedgerCorrupted, match="its history differs from the anchored one"):
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])


def test_new_patients_are_added_to_the_anchor_of_an_existing_ledger(paths):
    import json

    new_ledger(paths, patients=["a" * 16])
    new_ledger(paths, patients=["a" * 16, "b" * 16])
    assert json.loads((paths[1] / "aspire.json").read_text())["body"]["patients"] == ["a" * 16, "b" * 16]


def test_a_round_event_records_what_was_spent(paths, caplog):
    with caplog.at_level(logging.INFO, logger="lsemvae.privacy.ledger"):
        ledger = new_ledger(paths)
        ledger.record_round(round_number=3, run_id="job-7", history=[(1.0, Q, 13), (2.0, Q, 5)])
    assert [r.getMessage() for r in caplog.records] == [
        f"privacy ledger created for site 'aspire' at {paths[0]} (anchor in {paths[1]})",
        f"site 'aspire' round 3 (run job-7): 18 steps, epsilon now {ledger.epsilon():.4f} (delta=1e-05, budget 8)"]
    event = ledger.events[-1]
    assert event | {"time": None} == {"kind": "round", "round": 3, "run_id": "job-7", "steps": 18,
                                      "entries": [[1.0, Q, 13], [2.0, Q, 5]], "epsilon": ledger.epsilon(), "time": None}


def test_refusals_name_the_exact_command_that_fixes_them(paths):
    from lsemvae.privacy.ledger import REANCHOR_COMMAND, RESET_COMMAND, AnchorMissing, LedgerCorrupted

    ledger = new_ledger(paths)
    ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    anchor = paths[1] / "aspire.json"
    kept = anchor.read_bytes()
    anchor.unlink()
    with pytest.raises(AnchorMissing) as err:
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    assert f"its anchor {anchor} is missing" in str(err.value)
    assert REANCHOR_COMMAND.format(path=paths[0], site="aspire", anchor_dir=paths[1]) in str(err.value)
    anchor.write_bytes(kept)
    older = paths[0].read_bytes()
    ledger.record_round(round_number=2, run_id="r", history=[(1.0, Q, 26)])
    paths[0].write_bytes(older)                                           # an older copy restored
    with pytest.raises(LedgerCorrupted) as err:
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    assert f"is not vouched for by its anchor {anchor}: it is behind its anchor (13 steps against 26" in str(err.value)
    assert RESET_COMMAND.format(path=paths[0], site="aspire") in str(err.value)
    anchor.write_text("{broken")
    with pytest.raises(LedgerCorrupted) as err:                           # a damaged anchor stops a normal open
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    assert str(err.value).startswith(f"{anchor}: privacy ledger anchor is not valid JSON")
    assert RESET_COMMAND.format(path="<ledger>", site="aspire") in str(err.value)


def test_an_anchor_naming_another_site_is_refused(paths):
    from lsemvae.privacy.ledger import LedgerCorrupted

    new_ledger(paths).record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    _rewrite(paths[1] / "aspire.json", lambda body: body.update(site="bravo"))
    with pytest.raises(LedgerCorrupted, match=f"^{paths[1] / 'aspire.json'}: anchor names site 'bravo', expected 'aspire'$"):
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])


def test_opening_writes_nothing_and_a_record_rereads_what_is_on_disk(paths):
    """open() is safe for preflight and `show`: it leaves a lagging anchor alone; a round recorded through an open
    ledger rereads the file and its anchor first, so an older copy restored meanwhile is refused."""
    from lsemvae.privacy.ledger import LedgerCorrupted

    ledger = new_ledger(paths)
    ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    anchor = paths[1] / "aspire.json"
    lagging = anchor.read_bytes()
    ledger.record_round(round_number=2, run_id="r", history=[(1.0, Q, 26)])
    anchor.write_bytes(lagging)                                           # a crash between the ledger and its anchor
    PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    assert anchor.read_bytes() == lagging
    current = new_ledger(paths)                                           # open_or_create repairs it
    assert anchor.read_bytes() != lagging
    older = paths[0].read_bytes()
    current.record_round(round_number=3, run_id="r", history=[(1.0, Q, 39)])
    paths[0].write_bytes(older)
    with pytest.raises(LedgerCorrupted, match="it is behind its anchor"):
        current.record_round(round_number=4, run_id="r", history=[(1.0, Q, 39), (2.0, Q, 1)])


def test_a_re_created_anchor_keeps_the_datasets_patients(paths):
    import json

    new_ledger(paths, patients=["a" * 16])                                # nothing spent yet
    (paths[1] / "aspire.json").unlink()
    new_ledger(paths, patients=["a" * 16])
    assert json.loads((paths[1] / "aspire.json").read_text())["body"]["patients"] == ["a" * 16]


def test_patients_are_checked_against_every_other_sites_anchor(paths, tmp_path):
    """Anchors are read in name order: an unrelated one first, a damaged one, one from before anchors kept
    patients, and only then the site that spent the patients' budget."""
    from lsemvae.privacy.ledger import RESET_COMMAND, DatasetSpentElsewhere

    anchors = paths[1]
    for name, patients in (("alpha", ["1" * 16]), ("delta", ["d" * 16])):    # read in name order
        PrivacyLedger.open_or_create(tmp_path / name / "l.json", site=name, delta=1e-5, max_epsilon=8.0,
                                     anchor_dir=anchors, patients=patients)
    (anchors / "beta.json").write_text("{broken")
    PrivacyLedger.open_or_create(tmp_path / "charlie" / "l.json", site="charlie", delta=1e-5, max_epsilon=8.0,
                                 anchor_dir=anchors)
    _rewrite(anchors / "charlie.json", lambda body: body.pop("patients"))
    with pytest.raises(DatasetSpentElsewhere) as err:
        new_ledger(paths, patients=["d" * 16, "e" * 16])
    assert "1 of this dataset's 2 patients already spent privacy budget as site 'delta'" in str(err.value)
    assert RESET_COMMAND.format(path=tmp_path / "delta" / "l.json", site="delta") in str(err.value)


def test_a_reset_from_the_anchor_alone_keeps_the_accountant_and_its_epsilon(paths):
    ledger = new_ledger(paths, accountant="prv")
    eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    paths[0].unlink()
    fresh = PrivacyLedger.reset(paths[0], site="aspire", reason="ledger lost, custodian approved", anchor_dir=paths[1])
    assert fresh.accountant == "prv" and fresh.events[0]["previous"]["epsilon"] == pytest.approx(eps)
    assert fresh.events[0]["time"].endswith("+00:00")                     # event times are UTC


def test_a_reset_without_an_anchor_still_records_the_old_epsilon(paths):
    ledger = new_ledger(paths)
    eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    (paths[1] / "aspire.json").unlink()
    fresh = PrivacyLedger.reset(paths[0], site="aspire", reason="anchor volume lost", anchor_dir=paths[1])
    assert fresh.events[0]["previous"]["epsilon"] == pytest.approx(eps)


def test_a_round_records_only_what_is_new(paths):
    ledger = new_ledger(paths)
    ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    ledger.record_round(round_number=2, run_id="r", history=[(1.0, Q, 13), (2.0, Q, 5)])
    assert ledger.events[-1]["entries"] == [[2.0, Q, 5]] and ledger.events[-1]["steps"] == 5


def test_a_copy_from_before_a_reset_is_behind_its_anchor(paths):
    from lsemvae.privacy.ledger import LedgerCorrupted

    new_ledger(paths).record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    before_reset = paths[0].read_bytes()
    PrivacyLedger.reset(paths[0], site="aspire", reason="new extract, approved", anchor_dir=paths[1])
    paths[0].write_bytes(before_reset)
    with pytest.raises(LedgerCorrupted, match=r"it is behind its anchor \(0 resets against 1: an older copy\?\)"):
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])


def test_a_damaged_ledger_is_named_with_its_fix_when_opened(paths):
    from lsemvae.privacy.ledger import RESET_COMMAND, LedgerCorrupted

    new_ledger(paths).record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    paths[0].write_text("{broken")
    with pytest.raises(LedgerCorrupted) as err:
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    assert str(err.value).startswith(f"{paths[0]}: privacy ledger is not valid JSON")
    assert RESET_COMMAND.format(path=paths[0], site="aspire") in str(err.value)
    paths[0].unlink()
    (paths[1] / "aspire.json").unlink()
    new_ledger(paths).record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])
    _rewrite(paths[0], lambda body: body.pop("delta"))
    with pytest.raises(LedgerCorrupted, match=f"^{paths[0]}: privacy ledger has a missing or malformed field"):
        PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1])
    paths[0].parent.joinpath("as-dir").mkdir()
    with pytest.raises(LedgerCorrupted, match="privacy ledger cannot be read \\(Is a directory\\)"):
        PrivacyLedger.open(paths[0].parent / "as-dir", site="aspire", anchor_dir=paths[1])


def test_a_file_swapped_for_another_sites_ledger_is_refused_on_record(paths, tmp_path):
    ledger = new_ledger(paths)
    other = tmp_path / "bravo" / "privacy-ledger.json"
    PrivacyLedger.open_or_create(other, site="bravo", delta=DELTA, max_epsilon=8.0, anchor_dir=paths[1])
    paths[0].write_bytes(other.read_bytes())
    with pytest.raises(LedgerMismatch, match="belongs to site 'bravo', not 'aspire'"):
        ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 13)])


def test_an_anchor_that_cannot_be_written_says_what_to_do(paths, monkeypatch):
    from lsemvae.privacy import ledger as L

    real = L.atomic_write_json

    def failing(path, obj, **kw):
        if Path(path).parent == paths[1]:
            raise OSError(28, "No space left on device")
        return real(path, obj, **kw)

    monkeypatch.setattr(L, "atomic_write_json", failing)
    with pytest.raises(L.LedgerWriteError) as err:
        new_ledger(paths)
    assert str(err.value) == (f"{paths[1] / 'aspire.json'}: privacy ledger anchor could not be written ([Errno 28] No "
                              "space left on device). Make the directory writable or choose another anchor_dir in "
                              "the site config (outside the site's state directory).")
