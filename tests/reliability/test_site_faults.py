"""A site SIGKILLed mid-round on a real loopback deployment.

flower-superlink + three SuperNodes started through client/run.py + ``flwr run`` for 2 DP rounds,
min-sites 2. The victim site has already spent budget in an earlier run (its ledger holds that
history, written through the ledger's own API, as a finished run leaves it). As soon as the
victim's ClientApp is at work on round 1, the site's SuperNode, its SuperExec and the ClientApp are
SIGKILLed (no goodbye to the SuperLink), and the site is started again with client/run.py on the
same config and state dir. Round 1 completes with the two other sites and names the victim as
failed; the restarted site trains in round 2. Its privacy ledger is intact: it opens (checksum and
anchor agree), still starts with the earlier run's history (nothing lost, no reset), and its epsilon
equals Opacus' recomputation from the whole history and what the site reported in round 2.

How long the dead site holds up round 1 is bounded: Flower marks a SuperNode that misses its
heartbeats offline within 2 x 30 s and then answers for it with "Node Unavailable"; round-timeout
bounds it in any case.

The SuperLink is started without ``--host`` and the sites through client/run.py: while they are up,
every socket they listen on (Fleet, Control and runtime APIs) must be bound to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from lsemvae.site import load_site_config
from tests.federation.helpers import read_jsonl, write_checkpoint, write_sites
from tests.reliability.procs import (
    Deployment, descendants, kill_hard, listeners, process_tree, wait_for, wait_server_done,
)

pytestmark = pytest.mark.e2e

EARLIER_RUN = [(1.2, 0.4, 6)]     # (noise multiplier, sample rate, steps) the victim spent in an earlier run


def _earlier_run(cfg) -> float:
    from lsemvae.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger.open_or_create(cfg.ledger_path, site=cfg.name, delta=cfg.privacy.delta,
                                          max_epsilon=cfg.privacy.epsilon, accountant=cfg.privacy.accountant,
                                          anchor_dir=cfg.anchor_dir)
    return ledger.record_round(round_number=1, run_id="earlier-run", history=EARLIER_RUN)


def test_site_killed_mid_round_round_completes_and_site_rejoins(tmp_path):
    names = write_sites(tmp_path, n_sites=3, records=32, epsilon=8.0)   # 32: the 6-lead site sees both classes
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "server-out"
    victim = names[0]
    cfg = load_site_config(tmp_path / "sites" / f"{victim}.toml")
    spent_before = _earlier_run(cfg)
    marks: dict[str, float] = {}
    started = time.monotonic()
    with Deployment(tmp_path, superlink_host=None) as dep:   # no --host: Flower's default must be loopback
        link = dep.superlink()
        for name in names:
            dep.join(name)
        # round 1 must include every site: the ServerApp starts a round as soon as min-sites are online
        wait_for(lambda: all(dep.site_online(n) for n in names), "all sites online", 180, [link, *dep.sites.values()])
        marks["online"] = time.monotonic() - started
        # Fleet + Control + runtime APIs of the SuperLink, the SuperNodes' runtime APIs: nothing beyond loopback
        bound = listeners([p for proc in (link, *dep.sites.values()) for p in (proc.pid, *descendants(proc.pid))])
        assert f"127.0.0.1:{dep.port}" in bound and all(a.startswith("127.0.0.1:") for a in bound), bound
        # round-timeout only bounds the wait: the dead site is given up on when its heartbeats stop (<= 60 s)
        dep.run({"num-server-rounds": 2, "min-sites": 2, "round-timeout": 240.0, "batch-size": 8, "local-epochs": 1,
                 "checkpoint": str(ckpt), "out-dir": str(out), "dp": True})
        # mid-round: round 1 is sent (the sites' heads were checked first) and the victim's ClientApp process
        # exists, i.e. its SuperNode pulled round 1 and started work
        wait_for(lambda: (out / "server.log").exists() and "round 1/2: sending" in (out / "server.log").read_text(),
                 "round 1 sent", 300, [link])
        wait_for(lambda: process_tree(dep.sites[victim], "flwr-clientapp"), "victim's ClientApp running", 300, [link])
        victim_node = int(re.search(r"SuperNode ID: (\d+)", dep.log(f"{victim}.log")).group(1))
        kill_hard(dep.sites[victim])                       # SuperNode + SuperExec + ClientApp, no goodbye
        killed_at = time.time()
        marks["killed"] = time.monotonic() - started
        dep.join(victim, "-restarted")                     # the operator restarts it: same config, same state dir
        wait_server_done(dep, out, 900)
        marks["done"] = time.monotonic() - started
        assert dep.sites[victim].poll() is None, dep.log(f"{victim}-restarted.log")[-3000:]

    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    lost, rejoined = rows
    assert lost["sites_trained"] == 2 and set(lost["train"]) == set(names[1:]), lost["train"].keys()
    # one failure, attributed to the victim's node (not to the SuperLink that answered for it)
    missing = [f for f in lost["failures"] if f["stage"] == "train"]
    assert len(missing) == 1 and missing[0]["node"] == victim_node, (lost["failures"], victim_node)
    assert "Node Unavailable" in missing[0]["reason"] or "no reply within round-timeout" in missing[0]["reason"]
    # the dead site held the round up for at most 2 x 30 s after it died (its heartbeats stop; Flower then marks it
    # offline), never the round-timeout (240 s); 30 s more for the survivors' own work under load
    st = lost["stage_seconds"]
    train_ended = lost["time"] - lost["seconds"] + st["wait_nodes"] + st["train"]
    assert train_ended - killed_at <= 2 * 30 + 30, (train_ended - killed_at, st)
    assert set(rejoined["train"]) == set(names), rejoined["train"].keys()        # back in the next round
    assert json.loads((out / "report" / "report.json").read_text())["status"] == "completed"

    # The killed site's ledger is intact: it opens (checksum, anchor), still starts with the earlier run, and its
    # epsilon is the accountant's recomputation from the whole history and what the site reported in round 2.
    from opacus.accountants import RDPAccountant

    from lsemvae.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger.open(cfg.ledger_path, site=victim, anchor_dir=cfg.anchor_dir)
    body = json.loads(cfg.ledger_path.read_text())["body"]
    runs = [(e["run_id"], e["round"]) for e in body["events"] if e["kind"] == "round"]
    assert runs[0] == ("earlier-run", 1) and runs[-1][1] == 2 and len(runs) in (2, 3), runs  # 3: round 1 recorded
    assert [tuple(h) for h in body["history"][:1]] == EARLIER_RUN
    acc = RDPAccountant()
    acc.history = [tuple(h) for h in body["history"]]
    assert acc.get_epsilon(delta=body["delta"]) == pytest.approx(ledger.epsilon(), abs=1e-9)
    assert ledger.epsilon() == pytest.approx(rejoined["train"][victim]["epsilon"], abs=1e-9)
    assert ledger.epsilon() > spent_before > 0
    print(f"site fault: {time.monotonic() - started:.0f} s wall; marks {({k: round(v) for k, v in marks.items()})}; "
          f"round seconds {[round(r['seconds'], 1) for r in rows]}; round-1 failure {missing[0]['reason'][:60]!r}")
