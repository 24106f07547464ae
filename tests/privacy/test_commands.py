"""`lsemvae privacy show / reset / set-budget` through the real CLI parser."""

from __future__ import annotations

import argparse
import json

import pytest

from lsemvae.privacy import LedgerMissing, PrivacyLedger
from lsemvae.privacy import commands


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lsemvae")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_show_reset_and_set_budget(tmp_path, capsys):
    path, anchors = tmp_path / "state" / "ledger.json", tmp_path / "anchors"
    ledger = PrivacyLedger.open_or_create(path, site="aspire", delta=1e-5, max_epsilon=5.0, anchor_dir=anchors)
    ledger.record_round(round_number=1, run_id="r1", history=[(1.0, 1 / 13, 26)])

    assert run("privacy", "show", "--ledger", str(path), "--site", "aspire", "--anchor-dir", str(anchors), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["epsilon"] == pytest.approx(3.709, abs=2e-3) and shown["remaining"] == pytest.approx(5 - shown["epsilon"])

    path.unlink()
    with pytest.raises(LedgerMissing):
        run("privacy", "show", "--ledger", str(path), "--site", "aspire", "--anchor-dir", str(anchors))
    with pytest.raises(SystemExit):  # --confirm is required
        run("privacy", "reset", "--ledger", str(path), "--site", "aspire", "--anchor-dir", str(anchors))
    assert run("privacy", "reset", "--ledger", str(path), "--site", "aspire", "--anchor-dir", str(anchors),
               "--confirm", "state volume lost; spending 3.71 recorded in incident 42") == 0
    out = capsys.readouterr().out
    assert "reset" in out and "incident 42" in out
    fresh = PrivacyLedger.open(path, site="aspire", anchor_dir=anchors)
    assert fresh.epsilon() == 0.0 and fresh.events[0]["reason"].endswith("incident 42")

    assert run("privacy", "set-budget", "--ledger", str(path), "--site", "aspire", "--anchor-dir", str(anchors),
               "--max-epsilon", "8", "--confirm", "custodian approved 8") == 0
    assert PrivacyLedger.open(path, site="aspire", anchor_dir=anchors).max_epsilon == 8.0
    assert run("privacy", "show", "--ledger", str(path), "--anchor-dir", str(anchors)) == 0
    assert "budget" in capsys.readouterr().out


def test_show_reads_like_a_bank_statement_from_the_site_config(tmp_path, capsys):
    """Each round with its job, steps, noise and what it cost; the balance after it; budget changes."""
    from lsemvae.fileio import dump_toml
    from lsemvae.site import load_site_config

    path = tmp_path / "site.toml"
    path.write_text(dump_toml({
        "name": "aspire", "state_dir": "state", "anchor_dir": "anchors", "tasks": [{"name": "right_heart"}],
        "data": {"format": "ludb", "root": "."}, "connection": {"superlink": "127.0.0.1:8000"},
        "privacy": {"epsilon": 8.0, "run_epsilon": 2.0, "delta": 1e-5}}))
    site = load_site_config(path)
    ledger = PrivacyLedger.open_or_create(site.ledger_path, site="aspire", delta=1e-5, max_epsilon=8.0,
                                          anchor_dir=site.anchor_dir)
    first = ledger.record_round(round_number=1, run_id="job-one", history=[(1.0, 1 / 13, 13)])
    second = ledger.record_round(round_number=2, run_id="job-one", history=[(1.0, 1 / 13, 26)])
    ledger.set_budget(max_epsilon=6.0, reason="custodian lowered it")
    assert run("privacy", "show", "--site-config", str(path)) == 0
    out = capsys.readouterr().out
    assert "at most 2 per job" in out and f"spent    epsilon {second:.4f} in 2 rounds" in out
    assert f"left     epsilon {6.0 - second:.4f}" in out
    rounds = [line.split() for line in out.splitlines() if " round " in line and "job-one" in line]
    # date, time, "round", job, round, steps, noise, spent, epsilon after
    assert [r[4] for r in rounds] == ["1", "2"] and [r[5] for r in rounds] == ["13", "13"]
    assert float(rounds[0][7]) == pytest.approx(first, abs=1e-4) and float(rounds[1][7]) == pytest.approx(second - first, abs=1e-4)
    assert float(rounds[1][8]) == pytest.approx(second, abs=1e-4)
    assert "budget 8 -> 6: custodian lowered it" in out
