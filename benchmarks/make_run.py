"""What `make run` reports, and what its final model really scores: one entry per label.

    python -m benchmarks.make_run --label "defaults"                  # `make run` (simulation/run.py)
    python -m benchmarks.make_run --label "fedadam" -- --strategy fedadam   # with simulation/run.py options

Runs ``simulation/run.py`` (the real ServerApp and ClientApp under Flower's simulation engine, as ``make run``
does) into a fresh folder, then reads two evaluations of the same final model on the same records (every
site's evaluation split): the report's pooled AUROC, which the server computes from the sites' k-anonymous
histograms (the only evaluation a deployment has), and the exact AUROC of the final model scored here on
every held-out record. Comparing runs, compare like with like: private with private, exact with exact.

Writes (adds its label to) ``benchmarks/results/make_run.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness as H

RESULT = "make_run.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.make_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True, help="name of this entry (an entry of the same name is replaced)")
    p.add_argument("--out", type=Path, default=H.REPO / "runs" / "bench-make-run", help="run folders (default runs/)")
    p.add_argument("simulation", nargs="*", help="options for simulation/run.py (after --)")
    args = p.parse_args(argv)
    started = time.monotonic()
    from lsemvae.federation.state import load_state

    out = (args.out / args.label.replace(" ", "-")).resolve()
    cmd = [sys.executable, str(H.REPO / "simulation" / "run.py"), *args.simulation, "--out", str(out)]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    subprocess.run(cmd, check=True, cwd=H.REPO)
    report = json.loads((out / "server" / "report" / "report.json").read_text())
    state = load_state(out / "server")
    sites = H.load_sites(sorted((out / "sites").glob("*.toml")))   # their state dirs hold the simulation's caches
    if not sites:
        raise SystemExit(f"{out}: no site configs of the simulation (real-data runs use configs/sites)")
    scores = H.exact_scores(H.model_of(state), sites, state.preprocess_config)
    entry = {"simulation_args": args.simulation, "status": report.get("status"),
             "private_auroc": report["final_auroc"], "epsilon_max": report.get("epsilon_max"),
             "exact_auroc": {t: H.macro_auroc(s["y"], s["p"]) for t, s in scores.items()},
             "evaluated": {t: {"records": int(len(s["y"])), "positives": int(s["y"].sum())} for t, s in scores.items()},
             "private_auroc_by_round": [r.get("auroc") for r in state.metrics],
             "run_config": {k: state.run_config.get(k) for k in ("num-server-rounds", "strategy", "lr", "local-epochs",
                                                                "server-lr", "proximal-mu", "dp", "train-encoders")}}
    old = H.read_results(RESULT)
    entries = {**old.get("entries", {}), args.label: entry}
    summary = {f"{label}: pooled AUROC, private / exact": ", ".join(
        f"{t} {e['private_auroc'].get(t, float('nan')):.3f} / {e['exact_auroc'][t]:.3f}" for t in e["exact_auroc"])
        for label, e in entries.items()}
    commands = {**old.get("commands", {}), args.label: H.command_line("make_run", argv)}
    H.write_results(H.RESULTS / RESULT, H.meta("make_run", argv, started, command=H.joined_commands(commands.values())),
                    {"summary": summary, "entries": entries, "commands": commands})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
