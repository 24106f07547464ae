"""Memory over rounds: RSS of the server and of a site process across a 30-round federated simulation.

Runs ``simulation/run.py`` (the real ServerApp and ClientApp under Flower's simulation engine) on a
tiny synthetic cohort and samples, from /proc, the resident memory of
  * the server: the ``flwr-simulation`` process, which runs the ServerApp for the whole run,
  * the sites: the Ray ``ClientAppActor`` processes, which run the ClientApp for every round (so a
    leak in the ClientApp, the data cache or Opacus would accumulate there),
  * the simulation SuperLink.
After each round (a new line in metrics.jsonl) it records each process's RSS, then fits a line to
rounds ``--skip``..N: the slope (MB per round) says whether memory is flat. In a deployment each
ClientApp message runs in a fresh process, so the simulation's long-lived actors are the harder case.

    python -m benchmarks.memory_rounds                 # 30 rounds, 2 sites, DP (~3-6 min here)
    python -m benchmarks.memory_rounds --rounds 10     # quicker
Writes benchmarks/results/memory_rounds.json (or --out).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import harness as H

ROLES = H.SIMULATION_ROLES


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def summarise(per_round: list[dict], rounds: int, skip: int) -> tuple[dict, bool]:
    """Per role: slope over rounds skip+1..N and over the second half (a warm-up that levels off
    shows as a smaller second-half slope; a leak keeps its slope), and whether memory is flat."""
    summary = {}
    for role in ROLES:
        # one series per role: the total over its processes (all sites' actors together)
        rows = [r for r in per_round if r["round"] > skip and r[role]]
        if len(rows) < 4:
            continue
        xs, ys = [r["round"] for r in rows], [sum(r[role].values()) for r in rows]
        half = len(xs) // 2
        s, s2 = slope(xs, ys), slope(xs[half:], ys[half:])
        summary[role] = {"slope_mb_per_round": round(s, 3), "second_half_slope_mb_per_round": round(s2, 3),
                         "first_mb": round(ys[0], 1), "last_mb": round(ys[-1], 1), "growth_mb": round(ys[-1] - ys[0], 1),
                         "processes": len({pid for r in per_round for pid in r[role]}),
                         "projected_mb_per_100_rounds": round(100 * s2, 1)}
    flat = all(abs(v["second_half_slope_mb_per_round"]) * (rounds - skip) < max(0.05 * v["first_mb"], 20.0)
               for v in summary.values())
    return summary, flat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_rounds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--records", type=int, default=16, help="synthetic records per site")
    p.add_argument("--no-dp", action="store_true", help="train without DP (default: DP)")
    p.add_argument("--skip", type=int, default=3, help="warm-up rounds left out of the slope")
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    p.add_argument("--out", type=Path, default=H.RESULTS / "memory_rounds.json")
    args = p.parse_args(argv)
    if args.rounds <= args.skip + 2:
        p.error(f"--rounds must exceed --skip + 2 ({args.skip + 2})")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="memrounds-") as tmp:
        work = Path(tmp)
        ckpt = H.narrow_checkpoint(work / "ckpt.pt")
        sim_out = work / "sim"
        cmd = [sys.executable, str(H.REPO / "simulation" / "run.py"), "--sites", str(args.sites), "--records",
               str(args.records), "--rounds", str(args.rounds), "--batch-size", "8", "--epsilon", "50",
               "--checkpoint", str(ckpt), "--out", str(sim_out), "--round-timeout", "300",
               "--eval-min-cell", "1"]   # tiny sites: evaluate (from 2 records on), as larger ones do
        if args.no_dp:
            cmd.append("--no-dp")
        print("running:", " ".join(cmd), flush=True)
        proc = H.start(cmd, work / "simulation.log")
        per_round: list[dict] = []
        peak: dict[str, float] = {role: 0.0 for role in ROLES}
        stop = threading.Event()

        def watch() -> None:
            metrics = sim_out / "server" / "metrics.jsonl"
            done = 0
            while not stop.is_set():
                snap = H.rss_by_role(proc.pid)
                for role, rows in snap.items():
                    if rows:
                        peak[role] = max(peak[role], max(rows.values()))
                try:
                    rounds = sum(1 for line in metrics.read_text().splitlines() if line.strip())
                except OSError:
                    rounds = 0
                if rounds > done:
                    done = rounds
                    per_round.append({"round": rounds, "t": round(time.monotonic() - started, 1),
                                      **{role: {str(k): round(v, 1) for k, v in rows.items()} for role, rows in snap.items()}})
                    print(f"round {rounds}: " + ", ".join(f"{r} {sum(v.values()):.0f} MB" for r, v in snap.items()),
                          flush=True)
                stop.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            stop.set()
            watcher.join(timeout=5)
            H.stop(proc, grace=30)   # the SuperLink runs in a session of its own: stop() ends it too
        tail = (work / "simulation.log").read_text()[-3000:]
    if rc != 0 or len(per_round) < args.rounds:
        print(tail, file=sys.stderr)
        print(f"error: simulation exited with {rc} after {len(per_round)} recorded rounds", file=sys.stderr)
        return 1

    summary, flat = summarise(per_round, args.rounds, args.skip)
    for role in summary:
        summary[role]["peak_mb"] = round(peak[role], 1)
    result = {
        "what": "RSS of the ServerApp process (flwr-simulation), the site ClientApp actors (Ray ClientAppActor, summed "
                "over sites) and the simulation SuperLink after each round of a federated simulation",
        "rounds": args.rounds, "sites": args.sites, "records_per_site": args.records, "dp": not args.no_dp,
        "slope_fit_rounds": [args.skip + 1, args.rounds],
        "flat": flat,
        "flat_rule": "|second-half slope| x fitted rounds < max(5% of the first fitted RSS, 20 MB) for every role",
        "summary": summary, "per_round": per_round,
    }
    H.write_results(args.out, H.meta("memory_rounds", argv, started), result)
    for role, v in summary.items():
        print(f"{role:>9}: {v['first_mb']:.0f} -> {v['last_mb']:.0f} MB, slope {v['slope_mb_per_round']:+.2f} MB/round")
    print(f"memory {'flat' if flat else 'GROWS'}; wrote {args.out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
