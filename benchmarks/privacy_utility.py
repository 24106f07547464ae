"""Privacy-utility curve (issue 5, item 3): federated AUROC at epsilon 0.5, 1, 2, 4, 8 and without DP.

    python -m benchmarks.privacy_utility                       # synthetic, real, real-full (~40 min here)
    python -m benchmarks.privacy_utility --only real           # one cohort; the others' results are kept

Cohorts (delta 1e-5 at every site):

* ``synthetic``: 5 sites x 4,000 = 20,000 synthetic records generated at 100 Hz (the 5-site spec of
  the benchmarks, :func:`benchmarks.harness.five_site_spec`, with every site a 6-lead device: fine-tuning is on the limb leads, and
  6-lead DP-SGD is what fits the compute budget), half of each site's patients held out for
  evaluation; tasks right_heart, left_atrial.
* ``real``: PTB-XL subset split by recording site + LUDB, 6 limb leads (:func:`benchmarks.harness.real_sites`); tasks superclass (PTB-XL sites) and left_atrial_lvh (all sites). The run-config default
  (train-encoders = auto: under DP only fusion + heads train); ``real-full`` trains the encoders under DP
  too, for comparison; ``synthetic-probe`` is the synthetic cohort with train-encoders = false.

Every setting is a fresh federated job from the same pretrained checkpoint (FedAvg, batch 32,
lr 1e-3, 1 local epoch per round; rounds per cohort in the JSON) through the library's own round
(:func:`benchmarks.harness.federate`: ``run_rounds`` over ``InProcessSites``, every site in a fresh
state dir): each site plans its noise multiplier once per job to end at the target epsilon (its whole
budget: ``epsilon = run_epsilon = target``) and records every round in its new privacy ledger; the
epsilon reported per site is the ledger's, recomputed by Opacus' RDP accountant from the recorded
(noise multiplier, sample rate, steps) history, not the target. The sites' noise ceiling
(``privacy.max_noise_multiplier``, default 5) is lifted to 1000 so that every site trains at every
target (a real site would refuse the smallest budgets rather than send mostly noise). AUROC is exact on
the pooled evaluation splits. Writes benchmarks/results/privacy_utility.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness as H

DELTA = 1e-5
NO_CEILING = {"max_noise_multiplier": 1000.0}


def run(sites, checkpoint, *, tasks, rounds: int, epsilon: float | None, train_encoders: bool | str, seed: int,
        work: Path, eval_records: int | None) -> dict:
    """One federated job; exact AUROC of its final model on the sites' held-out records."""
    import torch

    from lsemvae.train.checkpoint import load_checkpoint, preprocess_config

    torch.set_num_threads(1)
    started = time.monotonic()
    rc = {"checkpoint": str(checkpoint), "tasks": ",".join(tasks), "num-server-rounds": rounds,
          "dp": epsilon is not None, "train-encoders": train_encoders, "seed": seed}
    tag = ("nodp" if epsilon is None else f"eps{epsilon:g}") + f"-seed{seed}"
    state = H.federate(sites, rc, work / "run-state" / tag,
                       privacy=None if epsilon is None else {**H.budget(epsilon), **NO_CEILING})
    pre = preprocess_config(load_checkpoint(str(checkpoint))).model_dump_json()
    scores = H.exact_scores(H.model_of(state), sites, pre, limit=eval_records)
    last = state.metrics[-1]
    out = {"auroc": {t: H.macro_auroc(s["y"], s["p"]) for t, s in scores.items()},
           "auroc_per_site": {site.name: {t: H.macro_auroc(s["y"][s["site"] == site.name], s["p"][s["site"] == site.name])
                                          for t, s in scores.items() if (s["site"] == site.name).any()}
                              for site in sites},
           "private_auroc": last["auroc"], "seconds": round(time.monotonic() - started, 1)}
    if epsilon is not None:
        out["epsilon"] = {s: r["epsilon"] for s, r in last["train"].items()}
        out["noise_multiplier"] = {s: r["noise_multiplier"] for s, r in last["train"].items()}
    return out


def curve(sites, checkpoint: Path, *, tasks, rounds: int, epsilons: list[float], work: Path,
          eval_records: int | None = None, train_encoders: bool | str = True, seeds: int = 1) -> list[dict]:
    """One row per setting; with ``seeds`` > 1 each setting runs once per run seed (head initialisation, the
    sites' batch order without DP) and the row's AUROC is the seed mean (every seed's in ``per_seed``); the
    row's other fields (per-site AUROC, noise multipliers) are seed 0's."""
    rows = []
    for eps in [None, *epsilons]:
        label = "no DP" if eps is None else f"epsilon {eps:g}"
        print(f"-- {label}", flush=True)
        runs = [run(sites, checkpoint, tasks=tasks, rounds=rounds, epsilon=eps, train_encoders=train_encoders,
                    seed=seed, work=work, eval_records=eval_records) for seed in range(seeds)]
        for seed, r in enumerate(runs):
            print(f"   seed {seed}: AUROC {r['auroc']}" + (f"; site epsilon (ledger) {r['epsilon']}" if eps else ""),
                  flush=True)
        row = {"setting": label, "target_epsilon": eps, **runs[0],
               "auroc": {t: float(np.mean([r["auroc"][t] for r in runs])) for t in tasks}}
        if seeds > 1:
            row["auroc_sd"] = {t: float(np.std([r["auroc"][t] for r in runs], ddof=1)) for t in tasks}
            row["per_seed"] = [{"seed": i, "auroc": r["auroc"], "epsilon": r.get("epsilon")} for i, r in enumerate(runs)]
        if eps is not None:   # every run's own ledger; the largest per site is what a claim may quote
            row["epsilon"] = {s: max(r["epsilon"][s] for r in runs) for s in runs[0]["epsilon"]}
        rows.append(row)
    return rows


def run_synthetic(args, *, train_encoders: bool = True) -> dict:
    work = args.out / f"synthetic-{5 * args.records}"
    spec = H.five_site_spec(args.records, fs=100, leads="6L")
    sites = H.load_sites(H.synthetic_sites(spec, work, val_fraction=args.synthetic_eval_share, delta=DELTA))
    return {"data": f"synthetic, 5 sites x {args.records} records = {5 * args.records}, 100 Hz, 6 leads; "
                    f"{args.synthetic_eval_share:.0%} of each site's patients held out, "
                    f"{args.synthetic_eval_records} of them per site scored"
                    + ("" if train_encoders else "; run-config train-encoders = false: only fusion + heads train"),
            "n_records": 5 * args.records, "checkpoint": str(args.synthetic_checkpoint), "tasks": list(H.SYNTH_TASKS),
            "rounds": args.synthetic_rounds, "local_epochs": 1, "batch_size": 32, "lr": 1e-3, "delta": DELTA,
            "train_encoders": train_encoders,
            "settings": curve(sites, args.synthetic_checkpoint, tasks=H.SYNTH_TASKS, rounds=args.synthetic_rounds,
                              epsilons=args.epsilons, work=work, eval_records=args.synthetic_eval_records,
                              train_encoders=train_encoders)}


def run_real(args, *, train_encoders: bool | str = "auto") -> dict:
    work = args.out / "real-6L"
    sites = H.load_sites(H.real_sites(work, delta=DELTA))
    how = {"auto": "run-config train-encoders = auto (the default): only fusion + heads train under DP, everything "
                   "without", True: "run-config train-encoders = true: the encoders train under DP too"}[train_encoders]
    return {"data": "PTB-XL subset by recording site (0, 1, 2+3+small) + LUDB, 6 limb leads; 20% of each site's "
                    f"patients held out; {how}",
            "checkpoint": str(args.real_checkpoint), "tasks": list(H.REAL_TASKS), "rounds": args.real_rounds,
            "local_epochs": 1, "batch_size": 32, "lr": 1e-3, "delta": DELTA, "train_encoders": train_encoders,
            "seeds": args.real_seeds,
            "settings": curve(sites, args.real_checkpoint, tasks=H.REAL_TASKS, rounds=args.real_rounds,
                              epsilons=args.epsilons, work=work, train_encoders=train_encoders, seeds=args.real_seeds)}


COHORTS = {"synthetic": run_synthetic, "real": run_real,
           "real-full": lambda args: run_real(args, train_encoders=True),
           # run-config train-encoders = false: only fusion + heads train under DP (a federated probe)
           "synthetic-probe": lambda args: run_synthetic(args, train_encoders=False)}
LABELS = {"real": "PTB-XL by site + LUDB, 6L (default: fusion + heads only under DP)",
          "real-full": "PTB-XL by site + LUDB, 6L, encoders trained under DP",
          "synthetic-probe": "synthetic, fusion + heads only under DP"}


def summarise(results: dict) -> dict:
    s = {}
    for key, r in results.items():
        if key not in COHORTS:
            continue
        name = f"synthetic {r['n_records']:,}" if key == "synthetic" else LABELS[key]
        for row in r["settings"]:
            for t in r["tasks"]:
                s[f"{name}: {t} AUROC, {row['setting']}"] = round(row["auroc"][t], 3)
            if row["target_epsilon"] is not None:
                s[f"{name}: max site epsilon (ledger), target {row['target_epsilon']:g}"] = round(max(row["epsilon"].values()), 3)
    return s


def dp_trained_parameters(checkpoint: str, leads: tuple[str, ...], tasks, train_encoders: bool = True) -> int:
    """Parameters a site trains under DP (its leads' encoders unless a probe, fusion, its heads; minus DP_FROZEN)."""
    from lsemvae.federation.groups import group_of, groups_for
    from lsemvae.federation.server_round import initial_state
    from lsemvae.federation.training import DP_FROZEN
    from lsemvae.site import federation_config

    state = initial_state(federation_config({"checkpoint": checkpoint, "tasks": ",".join(tasks)}))
    model = H.model_of(state)   # the model the federation builds (its heads follow the run config)
    groups = {g for g in groups_for(leads, tasks) if train_encoders or not g.startswith("encoders.")}
    return sum(p.numel() for n, p in model.named_parameters() if group_of(n) in groups and n not in DP_FROZEN)


def write_markdown(results: dict, path: Path) -> None:
    """Table per cohort, and the noise-to-signal bound of one DP-SGD step: the Gaussian noise added to the
    batch's summed clipped gradients has norm ~ sigma * C * sqrt(d), the signal at most B * C."""
    lines = ["# Privacy-utility curve (federated, FedAvg)\n", "From `python -m benchmarks.privacy_utility` (commands, "
             "machine, per-site AUROC and noise multipliers in privacy_utility.json; plot privacy_utility.png). "
             "epsilon per site = the site's privacy ledger (Opacus RDP accountant over the recorded history), "
             "not the target.\n"]
    for key in COHORTS:
        r = results.get(key)
        if not r:
            continue
        d = r["dp_parameters"]
        sites = list(next(row["epsilon"] for row in r["settings"] if row["target_epsilon"] is not None))
        lines += [f"## {r['data']}\n", f"{r['rounds']} round(s) x 1 local epoch, batch {r['batch_size']}, lr {r['lr']}, "
                  f"delta {r['delta']:g}; a 6-lead site trains d = {d:,} parameters under DP."
                  + (f" AUROC: mean ± sd over run seeds 0-{r['seeds'] - 1}; epsilon: the largest any seed's "
                     "ledger holds." if r.get("seeds", 1) > 1 else "") + "\n",
                  "| setting | " + " | ".join(f"AUROC {t}" for t in r["tasks"]) + " | epsilon per site (ledger): "
                  + ", ".join(sites) + " | noise multiplier | noise / max signal (sigma sqrt(d) / B) |",
                  "|---" * (len(r["tasks"]) + 4) + "|"]
        for row in r["settings"]:
            eps = ", ".join(f"{row['epsilon'][s]:.3f}" for s in sites) if row.get("epsilon") else "–"
            sig = row.get("noise_multiplier") or {}
            ratio = f"{max(sig.values()) * d ** 0.5 / r['batch_size']:.1f}" if sig else "–"
            sig_txt = f"{min(sig.values()):.2f}-{max(sig.values()):.2f}" if sig else "–"
            sd = row.get("auroc_sd", {})
            lines.append(f"| {row['setting']} | " + " | ".join(f"{row['auroc'][t]:.3f}" + (f" ± {sd[t]:.3f}" if t in sd else "")
                                                              for t in r["tasks"])
                         + f" | {eps} | {sig_txt} | {ratio} |")
        under = sorted({s for row in r["settings"] if row.get("epsilon") for s, e in row["epsilon"].items()
                        if e < 0.97 * row["target_epsilon"]})
        if under:
            lines.append(f"\nLedger epsilon below 97% of the target at {', '.join(under)}: those sites spent less than "
                         "their budget (their noise was planned for more than they trained).")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohorts = [k for k in COHORTS if k in results]
    fig, axes = plt.subplots(1, len(cohorts), figsize=(5.5 * len(cohorts), 4), squeeze=False)
    for ax, key in zip(axes[0], cohorts):
        r = results[key]
        dp = [row for row in r["settings"] if row["target_epsilon"] is not None]
        nodp = next(row for row in r["settings"] if row["target_epsilon"] is None)
        for i, t in enumerate(r["tasks"]):
            colour = f"C{i}"
            # x = the largest epsilon any site actually spent (ledger), not the target
            xs = [max(row["epsilon"].values()) for row in dp]
            ax.plot(xs, [row["auroc"][t] for row in dp], "o-", color=colour, label=f"{t} (DP)")
            ax.axhline(nodp["auroc"][t], color=colour, ls="--", lw=1, label=f"{t}, no DP")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_xticks([0.5, 1, 2, 4, 8], ["0.5", "1", "2", "4", "8"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"epsilon (max over sites, ledger), delta {r['delta']:g}")
        ax.set_ylabel("AUROC (pooled evaluation splits)")
        ax.set_title(f"{LABELS.get(key) or r['data'].split(';')[0]}\n{r['rounds']} round(s) x 1 local epoch",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from lsemvae.leads import LIMB_LEADS
    p = argparse.ArgumentParser(prog="python -m benchmarks.privacy_utility", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="synthetic,real,real-full",
                   help="comma-separated subset of " + ", ".join(COHORTS) + " (empty: only rewrite the reports)")
    p.add_argument("--epsilons", default="0.5,1,2,4,8", help="DP targets (besides no DP)")
    p.add_argument("--records", type=int, default=4000, help="synthetic records per site (default 4000 = 20,000 in all)")
    p.add_argument("--synthetic-rounds", type=int, default=1, help="rounds on the synthetic cohort (default 1)")
    p.add_argument("--synthetic-eval-share", type=float, default=0.6,
                   help="patients held out per site (default 0.6: DP-SGD over the other 40%% fits the compute budget)")
    p.add_argument("--synthetic-eval-records", type=int, default=1000,
                   help="held-out records scored per site (a fixed random subset; default 1000)")
    p.add_argument("--real-rounds", type=int, default=3, help="rounds on the real cohort (default 3)")
    p.add_argument("--real-seeds", type=int, default=3,
                   help="run seeds per setting on the real cohort, AUROC averaged (default 3: its small sites make "
                        "one run's AUROC under DP swing by 0.1-0.3 from seed to seed)")
    p.add_argument("--synthetic-checkpoint", type=Path, default=None,
                   help="default: the simulation's quick synthetic pretraining (cached)")
    p.add_argument("--real-checkpoint", default="compact-ptbxl-ludb",
                   help="pretrained on PTB-XL folds 1-9 + LUDB (default: the shipped compact-ptbxl-ludb)")
    p.add_argument("--out", type=Path, default=H.REPO / "runs" / "bench-privacy-utility")
    args = p.parse_args(argv)
    started = time.monotonic()
    args.out = args.out.resolve()
    args.epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
    H.quiet_sites()
    if args.synthetic_checkpoint is None:
        args.synthetic_checkpoint = H.synthetic_checkpoint()
    results = {k: v for k, v in H.read_results("privacy_utility.json").items() if k in COHORTS}
    for key in [k.strip() for k in args.only.split(",") if k.strip()] + [None]:   # None: rewrite the reports
        if key is not None:
            print(f"== {key}", flush=True)
            begun = time.monotonic()
            r = COHORTS[key](args)
            # counted now, while the checkpoint is at hand (the report of a kept cohort must not need it)
            r["dp_parameters"] = dp_trained_parameters(r["checkpoint"], LIMB_LEADS, r["tasks"],
                                                       r.get("train_encoders", True) is True)  # auto: a probe under DP
            results[key] = r | {"seconds": round(time.monotonic() - begun, 1), "machine": H.machine(),
                                "command": H.command_line("privacy_utility", argv)}
        command = H.joined_commands(r.get("command") for r in results.values())
        H.write_results(H.RESULTS / "privacy_utility.json", H.meta("privacy_utility", argv, started, command=command),
                        {"summary": summarise(results), **results})
        plot(results, H.RESULTS / "privacy_utility.png")
        write_markdown(results, H.RESULTS / "privacy_utility.md")
    print(json.dumps(summarise(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
