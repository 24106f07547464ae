"""Privacy ledger: epsilon from Opacus' accountant over the full history, persistence, fail-closed integrity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lsemvae.privacy import (
    BudgetExhausted,
    LedgerCorrupted,
    LedgerMismatch,
    LedgerMissing,
    PrivacyLedger,
)
from lsemvae.privacy.ledger import LedgerWriteError, history_increment

DELTA = 1e-5
Q = 1 / 13
STEPS = 13  # one local epoch of 13 batches per round


@pytest.fixture
def paths(tmp_path: Path):
    return tmp_path / "site_state" / "aspire" / "privacy-ledger.json", tmp_path / "anchors"


def new_ledger(paths, max_epsilon: float = 8.0) -> PrivacyLedger:
    path, anchors = paths
    return PrivacyLedger.open_or_create(path, site="aspire", delta=DELTA, max_epsilon=max_epsilon, anchor_dir=anchors)


def opacus_rdp(history, delta=DELTA) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [tuple(h) for h in history]
    return acc.get_epsilon(delta=delta)


def train_rounds(ledger: PrivacyLedger, rounds: int, *, run_id: str, sigma: float = 1.0, start: int = 1) -> list[float]:
    """What the client does each round, with the engine's history stood in by the merged history."""
    out = []
    for r in range(start, start + rounds):
        history = ledger.history
        if history and history[-1][:2] == (sigma, Q):
            history[-1] = (sigma, Q, history[-1][2] + STEPS)
        else:
            history.append((sigma, Q, STEPS))
        out.append(ledger.record_round(round_number=r, run_id=run_id, history=history))
    return out


def test_pinned_epsilon_matches_direct_rdp_accountant(paths):
    ledger = new_ledger(paths)
    eps = ledger.record_round(round_number=1, run_id="run-1", history=[(1.0, Q, 26)])
    assert eps == pytest.approx(opacus_rdp([(1.0, Q, 26)]), rel=1e-12)
    assert eps == pytest.approx(3.709, abs=2e-3)  # notes §7.1 item 5: sigma=1, q=1/13, 26 steps, delta=1e-5


def test_new_ledger_starts_at_zero_and_is_on_disk(paths):
    ledger = new_ledger(paths)
    assert ledger.epsilon() == 0.0 and ledger.history == []
    assert paths[0].is_file() and (paths[1] / "aspire.json").is_file()


def test_epsilon_grows_across_rounds_and_runs(paths):
    ledger = new_ledger(paths)
    run1 = train_rounds(ledger, 2, run_id="run-1")
    assert 0 < run1[0] < run1[1]
    reopened = new_ledger(paths)  # a second run, a fresh process: only the disk carries the spending
    assert reopened.epsilon() == pytest.approx(run1[1], rel=1e-12)
    run2 = train_rounds(reopened, 1, run_id="run-2", start=1)
    assert run2[0] > run1[1]
    assert reopened.total_steps == 3 * STEPS
    assert run2[0] == pytest.approx(opacus_rdp([(1.0, Q, 3 * STEPS)]), rel=1e-12)
    assert [e["run_id"] for e in reopened.events if e["kind"] == "round"] == ["run-1", "run-1", "run-2"]


def test_reported_epsilon_equals_independent_recomputation_from_json(paths):
    ledger = new_ledger(paths)
    train_rounds(ledger, 2, run_id="run-1", sigma=1.1)
    train_rounds(ledger, 2, run_id="run-2", sigma=1.3, start=1)  # a second sigma: two history entries
    doc = json.loads(paths[0].read_text())
    history = doc["body"]["history"]
    assert len(history) == 2
    independent = opacus_rdp(history, delta=doc["body"]["delta"])
    assert ledger.epsilon() == pytest.approx(independent, rel=1e-12)
    assert doc["body"]["events"][-1]["epsilon"] == pytest.approx(independent, rel=1e-12)


def test_projected_epsilon_over_budget_refuses(paths):
    ledger = new_ledger(paths, max_epsilon=3.5)
    ledger.check_can_train(noise_multiplier=1.0, sample_rate=Q, steps=STEPS)  # round 1: 3.05 fits
    train_rounds(ledger, 1, run_id="run-1")
    with pytest.raises(BudgetExhausted) as err:
        ledger.check_can_train(noise_multiplier=1.0, sample_rate=Q, steps=STEPS)  # round 2 would be 3.71
    msg = str(err.value)
    for part in ("aspire", "3.051", "3.709", "budget 3.5", "delta=1e-05", "refusing to train", "set-budget"):
        assert part in msg
    assert ledger.projected_epsilon(noise_multiplier=1.0, sample_rate=Q, steps=STEPS) == pytest.approx(3.709, abs=2e-3)


def test_budget_can_be_lowered_by_config_but_not_raised(paths):
    new_ledger(paths, max_epsilon=8.0)
    lowered = new_ledger(paths, max_epsilon=4.0)
    assert lowered.max_epsilon == 4.0 and lowered.events[-1]["kind"] == "budget"
    assert lowered.events[-1]["reason"] == "site config lowered the budget"
    with pytest.raises(LedgerMismatch, match="set-budget"):
        new_ledger(paths, max_epsilon=6.0)
    lowered.set_budget(max_epsilon=6.0, reason="custodian approved 6 for study B")
    assert new_ledger(paths, max_epsilon=6.0).max_epsilon == 6.0


def test_other_delta_or_site_is_refused(paths):
    path, anchors = paths
    new_ledger(paths)
    with pytest.raises(LedgerMismatch, match="delta"):
        PrivacyLedger.open_or_create(path, site="aspire", delta=1e-6, max_epsilon=8.0, anchor_dir=anchors)
    with pytest.raises(LedgerMismatch, match="belongs to site 'aspire'"):
        PrivacyLedger.open_or_create(path, site="other", delta=DELTA, max_epsilon=8.0, anchor_dir=anchors)


def test_history_that_does_not_continue_the_ledger_is_refused(paths):
    ledger = new_ledger(paths)
    train_rounds(ledger, 2, run_id="run-1")
    with pytest.raises(Exception, match="does not continue"):
        ledger.record_round(round_number=3, run_id="run-1", history=[(1.0, Q, 13)])  # engine not restored
    assert history_increment([(1.0, Q, 13)], [(1.0, Q, 20), (2.0, Q, 5)]) == [(1.0, Q, 7), (2.0, Q, 5)]


def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = data.index(b'"history"')
    i = next(j for j in range(i, len(data)) if data[j : j + 1].isdigit())  # first digit of the history
    data[i] ^= 0x01  # e.g. "1.0" -> "0.0": still valid JSON, so only the checksum can catch it
    path.write_bytes(bytes(data))


def corrupt_edit_epsilon(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["body"]["history"] = [[5.0, Q, 26]]  # "less spent": valid JSON, plausible numbers
    doc["body"]["events"][-1]["epsilon"] = 0.1
    path.write_text(json.dumps(doc))


def corrupt_unknown_version(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "corrupt", [corrupt_truncate, corrupt_flip_byte, corrupt_edit_epsilon, corrupt_unknown_version]
)
def test_corrupted_ledger_fails_closed_naming_the_file(paths, corrupt):
    ledger = new_ledger(paths)
    train_rounds(ledger, 2, run_id="run-1")
    corrupt(paths[0])
    with pytest.raises(LedgerCorrupted) as err:
        new_ledger(paths)
    assert str(paths[0]) in str(err.value)
    assert "refuses to train" in str(err.value) and "lsemvae privacy reset" in str(err.value)
    with pytest.raises(LedgerCorrupted):  # and a later record on the old object does not paper over it
        train_rounds(ledger, 1, run_id="run-1", start=3)


def test_consistent_edit_with_recomputed_checksum_is_caught_by_event_log_or_anchor(paths):
    from lsemvae.privacy.ledger import _sha256

    ledger = new_ledger(paths)
    train_rounds(ledger, 2, run_id="run-1")
    doc = json.loads(paths[0].read_text())
    doc["body"]["history"] = [[1.0, Q, 13]]
    doc["sha256"] = _sha256(doc["body"])
    paths[0].write_text(json.dumps(doc))
    with pytest.raises(LedgerCorrupted, match="round events log 26"):
        new_ledger(paths)


def test_older_copy_restored_is_behind_its_anchor(paths):
    ledger = new_ledger(paths)
    train_rounds(ledger, 1, run_id="run-1")
    backup = paths[0].read_bytes()
    train_rounds(ledger, 1, run_id="run-1", start=2)
    paths[0].write_bytes(backup)
    with pytest.raises(LedgerCorrupted, match="behind its anchor"):
        new_ledger(paths)


def test_deleted_ledger_with_anchor_is_missing_not_new(paths):
    ledger = new_ledger(paths)
    train_rounds(ledger, 2, run_id="run-1")
    paths[0].unlink()
    with pytest.raises(LedgerMissing) as err:
        new_ledger(paths)
    msg = str(err.value)
    assert str(paths[0]) in msg and "3.709" in msg and "lsemvae privacy reset" in msg
    assert not paths[0].exists()  # refusing did not create an empty ledger


def test_reset_with_reason_starts_over_and_is_logged(paths):
    path, anchors = paths
    ledger = new_ledger(paths)
    train_rounds(ledger, 2, run_id="run-1")
    path.unlink()
    with pytest.raises(Exception, match="reason is required"):
        PrivacyLedger.reset(path, site="aspire", reason=" ", anchor_dir=anchors)
    fresh = PrivacyLedger.reset(path, site="aspire", reason="new data extract 2026-11, approved by DPO", anchor_dir=anchors)
    assert fresh.epsilon() == 0.0 and fresh.resets == 1
    assert (fresh.delta, fresh.max_epsilon) == (DELTA, 8.0)  # taken from the anchor
    event = fresh.events[0]
    assert event["kind"] == "reset" and "approved by DPO" in event["reason"] and event["user"]
    assert event["previous"]["epsilon"] == pytest.approx(3.709, abs=2e-3)
    assert new_ledger(paths).epsilon() == 0.0  # training can go on


def test_reset_keeps_a_corrupted_ledger_aside(paths):
    path, anchors = paths
    train_rounds(new_ledger(paths), 1, run_id="run-1")
    corrupt_truncate(path)
    fresh = PrivacyLedger.reset(path, site="aspire", reason="disk failure, spending re-entered by hand", anchor_dir=anchors)
    previous = fresh.events[0]["previous"]
    assert "unreadable" in previous and Path(previous["kept_as"]).is_file()
    assert previous["epsilon"] == pytest.approx(3.051, abs=2e-3)  # from the anchor


def test_failed_write_leaves_old_ledger_and_no_partial_file(paths, monkeypatch):
    ledger = new_ledger(paths)
    train_rounds(ledger, 1, run_id="run-1")
    before = paths[0].read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(LedgerWriteError, match="simulated crash") as err:
        train_rounds(ledger, 1, run_id="run-1", start=2)
    monkeypatch.undo()
    assert str(paths[0]) in str(err.value) and "Do not send" in str(err.value)
    assert paths[0].read_bytes() == before
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [".privacy-ledger.json.lock", "privacy-ledger.json"]
    assert new_ledger(paths).total_steps == STEPS


def test_missing_anchor_refuses_until_an_explicit_logged_re_anchor(paths):
    """A ledger that has spent, without its anchor, could be an older copy: refused until the operator says so."""
    from lsemvae.privacy.commands import register  # noqa: F401  (the command exists)
    from lsemvae.privacy.ledger import AnchorMissing

    ledger = new_ledger(paths)
    eps = train_rounds(ledger, 1, run_id="run-1")[-1]
    anchor = paths[1] / "aspire.json"
    anchor.unlink()
    for opening in (lambda: PrivacyLedger.open(paths[0], site="aspire", anchor_dir=paths[1]), lambda: new_ledger(paths)):
        with pytest.raises(AnchorMissing, match="lsemvae privacy re-anchor"):
            opening()
    assert not anchor.exists()  # refusing writes nothing
    PrivacyLedger.open_unanchored(paths[0], site="aspire", anchor_dir=paths[1]).re_anchor(reason="anchor volume lost, ledger checked")
    reopened = new_ledger(paths)
    assert reopened.epsilon() == pytest.approx(eps)
    assert reopened.events[-1]["kind"] == "re-anchored" and reopened.events[-1]["reason"] == "anchor volume lost, ledger checked"
    assert json.loads(anchor.read_text())["body"]["epsilon"] == pytest.approx(eps)


def test_a_ledger_that_spent_nothing_is_re_anchored_silently(paths):
    """Created but never trained (a crash between creating the ledger and its anchor): nothing to protect."""
    new_ledger(paths)
    (paths[1] / "aspire.json").unlink()
    new_ledger(paths)
    assert (paths[1] / "aspire.json").is_file()


def test_forged_history_ahead_of_the_anchor_is_refused(paths):
    """One step "ahead" with a huge noise multiplier and a recomputed checksum: not an extension of the anchor."""
    from lsemvae.privacy.ledger import _sha256

    ledger = new_ledger(paths)
    train_rounds(ledger, 2, run_id="run-1")
    doc = json.loads(paths[0].read_text())
    doc["body"]["history"] = [[1e6, Q, 2 * STEPS + 1]]
    doc["body"]["events"][-1]["steps"] += 1
    doc["sha256"] = _sha256(doc["body"])
    paths[0].write_text(json.dumps(doc))
    with pytest.raises(LedgerCorrupted, match="does not extend the anchored history"):
        new_ledger(paths)


def test_renamed_site_does_not_give_its_patients_a_new_budget(paths):
    from lsemvae.privacy.ledger import DatasetSpentElsewhere

    path, anchors = paths
    patients = [f"{i:016x}" for i in range(40)]
    ledger = PrivacyLedger.open_or_create(path, site="aspire", delta=DELTA, max_epsilon=8.0, anchor_dir=anchors,
                                          patients=patients)
    train_rounds(ledger, 1, run_id="run-1")
    renamed = path.parent.parent / "aspire-2" / "privacy-ledger.json"
    with pytest.raises(DatasetSpentElsewhere, match="already spent privacy budget as site 'aspire'"):
        PrivacyLedger.open_or_create(renamed, site="aspire-2", delta=DELTA, max_epsilon=8.0, anchor_dir=anchors,
                                     patients=patients[10:] + ["ffffffffffffffff"])
    assert not renamed.exists()
    # a dataset with none of those patients is a new dataset
    PrivacyLedger.open_or_create(renamed, site="aspire-2", delta=DELTA, max_epsilon=8.0, anchor_dir=anchors,
                                 patients=["eeeeeeeeeeeeeeee"])


def test_prv_accountant_ledger(paths):
    path, anchors = paths
    ledger = PrivacyLedger.open_or_create(path, site="aspire", delta=DELTA, max_epsilon=8.0, accountant="prv", anchor_dir=anchors)
    eps = ledger.record_round(round_number=1, run_id="r", history=[(1.0, Q, 26)])
    assert eps == pytest.approx(3.14, abs=0.02)  # notes §7.1 item 5: PRV is tighter than RDP's 3.71
    assert ledger.epsilon() == eps                   # the ledger recomputes with its own accountant


def test_crash_between_ledger_and_anchor_write_is_accepted(paths):
    """The ledger is written first: a crash before the anchor write leaves the ledger ahead, which is fine."""
    ledger = new_ledger(paths)
    train_rounds(ledger, 1, run_id="run-1")
    anchor = paths[1] / "aspire.json"
    old_anchor = anchor.read_bytes()
    eps = train_rounds(ledger, 1, run_id="run-1", start=2)[-1]
    anchor.write_bytes(old_anchor)
    assert new_ledger(paths).epsilon() == pytest.approx(eps)
    assert json.loads(anchor.read_text())["body"]["total_steps"] == 2 * STEPS
