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
