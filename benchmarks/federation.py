"""Federated vs pooled fine-tuning on the same records, and what separates them (issue 20).

    python -m benchmarks.federation                         # every experiment at the default size
    python -m benchmarks.federation --only main,iid         # some; the others' results are kept
    python -m benchmarks.federation --records 2000          # 5 sites x 2,000 records
    python -m benchmarks.federation --only ''               # rewrite the report from the cached runs

**Arms.** Both start from the same pretrained checkpoint and the same fresh heads (the server's
:func:`~lsemvae.federation.server_round.initial_state` for the run seed), train the same groups (all
but the decoders without DP) with Adam, batch 32, lr 1e-3 (run-config defaults), on the same per-record
loss (:func:`lsemvae.model.losses.per_record_loss`; its batch mean is the objective of both), for the
same optimiser budget: R rounds x E local epochs federated, R x E epochs pooled.

* ``federated``: the library's own round, :func:`lsemvae.federation.server_round.run_rounds` over
  :class:`~lsemvae.federation.inprocess.InProcessSites` (each site a real site config with its own
  fresh state dir and ledger, :func:`benchmarks.harness.federate`).
* ``pooled``: central fine-tuning (:func:`pooled`) on the union of the sites' training splits, one
  Adam across epochs; positive weights from the pooled labels (``site`` weights: each record's own
  site's, the federated objective in expectation).
* ``pooled-dp``: centralised DP-SGD, a federation of ONE site that holds every site's training records
  (the same site training, Opacus and privacy ledger as a federated site), one round of R x E epochs.

**Scoring.** Every arm's final model is scored exactly on the same held-out records (every natural
site's own evaluation split) with :func:`benchmarks.harness.exact_scores`; arms are paired by run seed,
and the gap federated - pooled comes with a bootstrap CI over records and seed pairs
(:func:`benchmarks.harness.paired_difference`). Each run's scores are cached under ``--work``
(``runs/<seed>.npz``): an interrupted benchmark resumes, and the report is rebuilt from the cache.

**Experiments** (``--only``): see :data:`EXPERIMENTS`; the synthetic cohort is the default cohort's four
sites plus a 6-lead GP clinic (:func:`benchmarks.harness.five_site_spec`), the real one is PTB-XL split
by recording site plus LUDB on the 6 limb leads (:func:`benchmarks.harness.real_sites`).

Writes ``benchmarks/results/federation.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as H

RESULT = "federation.json"


# ----------------------------------------------------------------------------- cohorts

@dataclass
class Cohort:
    """Sites that train (``sites``) and sites whose evaluation splits score every arm (``scored``)."""

    name: str
    sites: list
    scored: list
    checkpoint: Path
    tasks: tuple[str, ...]
    describe: str
    preprocess_json: str = ""

    def __post_init__(self) -> None:
        from lsemvae.train.checkpoint import load_checkpoint, preprocess_config

        ckpt = load_checkpoint(str(self.checkpoint))
        self.preprocess_json = preprocess_config(ckpt).model_dump_json()


def synthetic(args, *, leads: str | None = None) -> Cohort:
    work = args.work / ("synthetic" if leads is None else f"synthetic-{leads}") / f"{args.records}"
    sites = H.load_sites(H.synthetic_sites(H.five_site_spec(args.records, leads=leads), work,
                                           val_fraction=args.eval_share))
    kind = "mixed 12/6-lead" if leads is None else f"every site {leads}"
    return Cohort(f"synthetic{'' if leads is None else '-' + leads}", sites, sites, args.synthetic_checkpoint,
                  H.SYNTH_TASKS, f"synthetic, 5 sites x {args.records} records ({kind}), {args.eval_share:.0%} of "
                  "each site's patients held out")


def regrouped(base: Cohort, args, name: str, groups: int, describe: str) -> Cohort:
    """The training records of ``base``'s sites, patients shuffled into ``groups`` new 12-lead sites (a 6-lead
    record stays 6-lead: its lead mask says so), each holding out only 5% for the round's own evaluation;
    scored on ``base``'s held-out records. A new site's records folder hard-links the original files (a
    symbolic link would point outside the folder, which the WFDB reader refuses)."""
    rows, source = [], {}
    for site in base.sites:
        data = H.site_data(site, base.preprocess_json)
        keep = set(np.asarray(data.cohort.record_ids)[data.train_idx])
        with open(site.data.labels, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            for r in reader:
                if r[0] in keep:
                    rows.append(r)
                    source[r[0]] = site.data.root
    patients = sorted({r[1] for r in rows})
    group = {p: i % groups for i, p in enumerate(np.random.default_rng(0).permutation(patients))}
    work = base.sites[0].data.root.parent.parent.parent / name
    paths = []
    for g in range(groups):
        site = f"{name}_{g}"
        records, labels = work / "cohort" / site / "records", work / "cohort" / site / "labels.csv"
        records.mkdir(parents=True, exist_ok=True)
        mine = [r for r in rows if group[r[1]] == g]
        for r in mine:
            for f in source[r[0]].glob(f"{r[0]}.*"):
                if not (records / f.name).exists():
                    os.link(f, records / f.name)
        with open(labels, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(mine)
        paths.append(H.write_site(work / "sites" / f"{site}.toml", H.site_config(
            site, work, leads="12L", tasks=[{"name": t, "column": t} for t in base.tasks],
            data={"format": "manifest", "root": str(records), "labels": str(labels), "val_fraction": 0.05})))
    return Cohort(name, H.load_sites(paths), base.scored, base.checkpoint, base.tasks, describe)


def real(args) -> Cohort:
    sites = H.load_sites(H.real_sites(args.work / "real-6L"))
    return Cohort("real", sites, sites, args.real_checkpoint, H.REAL_TASKS,
                  "PTB-XL subset split by recording site (0, 1, 2+3+small) + LUDB, 6 limb leads, 20% of each "
                  "site's patients held out")


# ----------------------------------------------------------------------------- arms

@dataclass(frozen=True)
class Arm:
    """One way of training: ``kind`` federated / pooled / pooled-dp, run-config keys, pooled settings."""

    kind: str
    run_config: dict = field(default_factory=dict)
    mode: str = "full"                  # pooled: "full" (all but decoders) or "probe" (encoders frozen)
    pos_weights: str = "pooled"         # pooled: "pooled" or "site" (each record its own site's weights)
    fresh_optimizer: bool = False       # pooled: a new Adam every epoch (as every site starts every round)
    epsilon: float | None = None        # federated / pooled-dp under DP: every site's budget

    def key(self, cohort: Cohort, rounds: int, local_epochs: int, seed: int) -> str:
        text = json.dumps([self.kind, sorted(self.run_config.items()), self.mode, self.pos_weights, self.epsilon,
                           *([True] if self.fresh_optimizer else []),
                           cohort.name, [s.name for s in cohort.sites], str(cohort.checkpoint), rounds, local_epochs,
                           seed], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_config(cohort: Cohort, arm: Arm, *, rounds: int, local_epochs: int, seed: int) -> dict:
    rc = {"checkpoint": str(cohort.checkpoint), "tasks": ",".join(cohort.tasks), "num-server-rounds": rounds,
          "local-epochs": local_epochs, "dp": arm.epsilon is not None, "seed": seed, **arm.run_config}
    if arm.kind == "pooled-dp":   # one data holder, one round holding every epoch
        rc.update({"num-server-rounds": 1, "local-epochs": rc["num-server-rounds"] * rc["local-epochs"]})
    return rc


def run_arm(cohort: Cohort, arm: Arm, args, seed: int, *, cached_only: bool = False) -> dict | None:
    """The arm's final model scored on the cohort's held-out records (``{task: {"y", "p", "site"}, "_meta": ...}``);
    cached by everything that defines the run. ``cached_only``: None instead of running it."""
    key = arm.key(cohort, args.rounds, args.local_epochs, seed)
    cache = args.work / "runs" / f"{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return {t: {k: z[f"{t}/{k}"] for k in ("y", "p", "site")} for t in meta["tasks"]} | {"_meta": meta}
    if cached_only:
        return None
    started = time.monotonic()
    rc = run_config(cohort, arm, rounds=args.rounds, local_epochs=args.local_epochs, seed=seed)
    meta: dict[str, Any] = {"kind": arm.kind, "run_config": rc, "seed": seed}
    if arm.kind == "pooled":
        model = pooled(cohort, rc, mode=arm.mode, pos_weights=arm.pos_weights, fresh_optimizer=arm.fresh_optimizer)
    else:
        sites = [pooled_site(cohort, args)] if arm.kind == "pooled-dp" else cohort.sites
        state = H.federate(sites, rc, args.work / "run-state" / key,
                           privacy=None if arm.epsilon is None else H.budget(arm.epsilon))
        model = H.model_of(state)
        last = state.metrics[-1]
        meta["private_auroc_by_round"] = [r["auroc"] for r in state.metrics]
        meta["epsilon"] = last.get("epsilon")
    scores = H.exact_scores(model, cohort.scored, cohort.preprocess_json)
    meta.update(tasks=sorted(scores), seconds=round(time.monotonic() - started, 1),
                exact_auroc={t: H.macro_auroc(s["y"], s["p"]) for t, s in scores.items()})
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, meta=json.dumps(meta), **{f"{t}/{k}": v for t, s in scores.items() for k, v in s.items()})
    print(f"  {arm.kind} seed {seed}: " + ", ".join(f"{t} {a:.3f}" for t, a in meta["exact_auroc"].items())
          + f" ({meta['seconds']:.0f} s)", flush=True)
    return scores | {"_meta": meta}


def pooled_site(cohort: Cohort, args):
    """One site holding the training records of all the cohort's (synthetic) sites: centralised DP-SGD."""
    return regrouped(cohort, args, f"pooled-{cohort.name}", 1, "pooled").sites[0]


class _PooledItems:
    """A site's training records with every pooled task (NaN where the site has no label for it: masked out of
    the loss) and, per task, the positive weights the record is trained with."""

    def __init__(self, dataset, tasks: dict, weights: dict):
        self.dataset, self.tasks, self.weights = dataset, tasks, weights

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        import torch

        item = self.dataset[i]
        item["y"] = {t: item["y"].get(t, torch.full((task.n_outputs,), float("nan"))) for t, task in self.tasks.items()}
        item["pos_weight"] = self.weights
        return item


def pooled(cohort: Cohort, rc: dict, *, mode: str, pos_weights: str, fresh_optimizer: bool = False):
    """Central fine-tuning on the union of the sites' training splits: the federation's starting model
    (:func:`~lsemvae.federation.server_round.initial_state` for the same run config), its objective
    (:func:`lsemvae.model.losses.per_record_loss`, batch mean), Adam at the same lr and batch size, for
    ``num-server-rounds x local-epochs`` epochs; ``mode`` "probe" freezes the encoders; ``fresh_optimizer``:
    a new Adam every epoch."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from lsemvae.federation.server_round import initial_state
    from lsemvae.model.losses import per_record_loss, positive_weights
    from lsemvae.site import federation_config
    from lsemvae.train.finetune import set_trainable

    torch.set_num_threads(1)
    fed = federation_config({"min-sites": 1, **rc})
    model = H.model_of(initial_state(fed))
    set_trainable(model, mode)
    datas = [(s, H.site_data(s, cohort.preprocess_json)) for s in cohort.sites]
    tasks = {t: next(d.tasks[t] for _, d in datas if t in d.tasks) for t in cohort.tasks}
    labels = {t: [np.asarray(d.cohort.labels[t])[d.train_idx] for _, d in datas if t in d.tasks] for t in tasks}
    pooled_w = {t: positive_weights(np.concatenate(labels[t])) for t in tasks}
    parts = []
    for site, data in datas:
        own = {t: positive_weights(np.asarray(data.cohort.labels[t])[data.train_idx]) if t in data.tasks
               else torch.ones(task.n_outputs) for t, task in tasks.items()}
        parts.append(_PooledItems(data.dataset(data.train_idx, site.lead_names), tasks,
                                  own if pos_weights == "site" else pooled_w))
    kinds = {t: task.kind for t, task in tasks.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=fed.lr)
    gen = torch.Generator().manual_seed(fed.seed)
    model.train()
    for _ in range(fed.num_server_rounds * fed.local_epochs):
        if fresh_optimizer:
            opt = torch.optim.Adam(trainable, lr=fed.lr)
        for batch in DataLoader(ConcatDataset(parts), batch_size=fed.batch_size, shuffle=True, generator=gen):
            opt.zero_grad()
            out = model(batch["x"], batch["lead_mask"], decode=False)
            per_record_loss(out.logits, batch["y"], kinds, batch["pos_weight"]).mean().backward()
            opt.step()
    return model.eval()


# ----------------------------------------------------------------------------- experiments

FED = Arm("federated")
POOLED = Arm("pooled")


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` on a cohort; ``label`` names the row; ``seeds``: only these of ``--seeds`` (a sweep).

    ``factor``: the suspect this comparison isolates, for the decomposition: how far the synthetic gap (FedAvg on
    the natural sites minus pooled) moves when the factor is removed or changed (this gap minus that one); with
    ``effect`` the comparison itself is the factor's effect on pooled training (e.g. the sites' own weights).
    """

    label: str
    cohort: str
    a: Arm
    b: Arm = POOLED
    seeds: tuple[int, ...] | None = None
    factor: str | None = None
    effect: bool = False


#: experiment -> (question, comparisons). Cohort names: synthetic, synthetic-12L, iid, real.
EXPERIMENTS: dict[str, tuple[str, list[Comparison]]] = {
    "main": ("Federated (FedAvg, run-config defaults) vs pooled, both cohorts", [
        Comparison("synthetic: FedAvg - pooled", "synthetic", FED),
        Comparison("real: FedAvg - pooled", "real", FED)]),
    "iid": ("Site heterogeneity: the same training records re-split IID over 5 sites", [
        Comparison("synthetic, IID re-split: FedAvg - pooled", "iid", FED,
                   factor="site heterogeneity: the natural sites re-split IID")]),
    "leads": ("Mixed 6/12-lead sites (masks, per-group weighting) vs every site 12-lead", [
        Comparison("synthetic, every site 12-lead: FedAvg - pooled", "synthetic-12L", FED,
                   factor="mixed 6/12-lead sites: every site 12-lead")]),
    "weights": ("Each site's own prevalence in the positive weights (pooled training with each record's own "
                "site's weights: the federated objective in expectation)", [
        Comparison("synthetic: pooled with site weights - pooled", "synthetic", Arm("pooled", pos_weights="site"),
                   factor="each site's own positive weights (their effect on pooled training)", effect=True)]),
    "optimizer-reset": ("The sites' fresh Adam every round: pooled training with a new Adam every epoch", [
        Comparison("synthetic: pooled with a new Adam every epoch - pooled", "synthetic",
                   Arm("pooled", fresh_optimizer=True),
                   factor="a fresh Adam every round (its effect on pooled training)", effect=True)]),
    "local-steps": ("Local steps per round at the same budget: 1 round x all epochs", [
        Comparison("synthetic: FedAvg 1 round x R epochs - pooled", "synthetic",
                   Arm("federated", {"num-server-rounds": 1, "local-epochs": "ALL"}),
                   factor="local steps per round: all of them in 1 round")]),
    "drift": ("Client drift: FedProx, FedAdam", [
        Comparison("synthetic: FedProx mu 0.1 - pooled", "synthetic",
                   Arm("federated", {"strategy": "fedprox", "proximal-mu": 0.1}), factor="client drift: FedProx mu 0.1"),
        Comparison("synthetic: FedAdam server lr 0.01 - pooled", "synthetic",
                   Arm("federated", {"strategy": "fedadam", "server-lr": 0.01}),
                   factor="server optimiser: FedAdam, server lr 0.01")]),
    "momentum": ("Server momentum: FedAvgM", [
        Comparison("synthetic: FedAvgM momentum 0.9 - pooled", "synthetic",
                   Arm("federated", {"strategy": "fedavgm", "server-beta1": 0.9}),
                   factor="server step: FedAvgM, momentum 0.9"),
        Comparison("synthetic: FedAvgM momentum 0.7 - pooled (seed 0)", "synthetic",
                   Arm("federated", {"strategy": "fedavgm", "server-beta1": 0.7}), seeds=(0,),
                   factor="server step: FedAvgM, momentum 0.7 (seed 0)")]),
    "local-lr": ("One seed each: the sites' learning rate (pooled stays at the run-config default)", [
        *(Comparison(f"synthetic: FedAvg lr {lr:g} - pooled (seed 0)", "synthetic", Arm("federated", {"lr": lr}),
                     seeds=(0,), factor=f"local step size: FedAvg, lr {lr:g} (seed 0)") for lr in (3e-3, 1e-2))]),
    "local-batch": ("More sequential local steps at the same budget: smaller batches at the sites (pooled stays at 32)", [
        *(Comparison(f"synthetic: FedAvg batch {b} - pooled (seed 0)", "synthetic", Arm("federated", {"batch-size": b}),
                     seeds=(0,), factor=f"local steps per round: FedAvg, batch {b} (seed 0)") for b in (8, 16))]),
    "pooled-curve": ("Pooled training's own learning curve: where FedAvg after R rounds stands (seed 0)", [
        *(Comparison(f"synthetic: pooled {n} epoch(s) - pooled R epochs (seed 0)", "synthetic",
                     Arm("pooled", {"num-server-rounds": n}), seeds=(0,)) for n in (1, 2))]),
    "tune": ("One seed each: FedAdam's server learning rate, FedProx's mu", [
        *(Comparison(f"synthetic: FedAdam server lr {lr:g} - pooled (seed 0)", "synthetic",
                     Arm("federated", {"strategy": "fedadam", "server-lr": lr}), seeds=(0,),
                     factor=f"server optimiser: FedAdam, server lr {lr:g} (seed 0)")
          for lr in (0.001, 0.003, 0.03, 0.1)),
        *(Comparison(f"synthetic: FedProx mu {mu:g} - pooled (seed 0)", "synthetic",
                     Arm("federated", {"strategy": "fedprox", "proximal-mu": mu}), seeds=(0,),
                     factor=f"client drift: FedProx mu {mu:g} (seed 0)") for mu in (0.01, 1.0))]),
    "budget": ("Not the same budget, a diagnostic: is FedAvg only slower? 3x the rounds", [
        Comparison("synthetic: FedAvg 3R rounds - pooled R epochs (seed 0)", "synthetic",
                   Arm("federated", {"num-server-rounds": "3R"}), seeds=(0,),
                   factor="3x the rounds, pooled unchanged: NOT the same budget (seed 0)")]),
    "dp": ("Under DP (run-config defaults: sites train fusion + heads): the federation vs centralised DP-SGD at the "
           "same epsilon (every record protected at epsilon either way)", [
        *(Comparison(f"synthetic, epsilon {eps:g}: FedAvg with DP - pooled DP-SGD", "synthetic",
                     Arm("federated", epsilon=eps), Arm("pooled-dp", epsilon=eps)) for eps in (8.0, 1.0))]),
    "probe": ("Federated probe (encoders frozen) vs encoders trained", [
        Comparison("synthetic: FedAvg probe - pooled probe", "synthetic",
                   Arm("federated", {"train-encoders": False}), Arm("pooled", mode="probe"),
                   factor="encoders frozen in both arms (probe)")]),
}


def cohort_of(name: str, args, built: dict) -> Cohort:
    if name not in built:
        if name == "synthetic":
            built[name] = synthetic(args)
        elif name == "synthetic-12L":
            built[name] = synthetic(args, leads="12L")
        elif name == "iid":
            built[name] = regrouped(cohort_of("synthetic", args, built), args, "iid", 5,
                                    "the synthetic sites' training records, patients shuffled IID into 5 sites")
        elif name == "real":
            built[name] = real(args)
        else:
            raise KeyError(name)
    return built[name]


def resolve(arm: Arm, args) -> Arm:
    """``"ALL"`` local epochs: the whole budget in one round; ``"3R"`` rounds: three times ``--rounds``."""
    rc = dict(arm.run_config)
    if rc.get("local-epochs") == "ALL":
        rc["local-epochs"] = args.rounds * args.local_epochs
    if rc.get("num-server-rounds") == "3R":
        rc["num-server-rounds"] = 3 * args.rounds
    return dataclasses.replace(arm, run_config=rc)


def compare(c: Comparison, args, built: dict) -> dict:
    cohort = cohort_of(c.cohort, args, built)
    print(f"-- {c.label}", flush=True)
    seeds = [s for s in args.seeds if c.seeds is None or s in c.seeds]
    a = [run_arm(cohort, resolve(c.a, args), args, s) for s in seeds]
    b = [run_arm(cohort, resolve(c.b, args), args, s) for s in seeds]
    out = {"label": c.label, "cohort": cohort.name, "data": cohort.describe, "a": describe(c.a), "b": describe(c.b),
           "seeds": seeds, "tasks": {}}
    for t in cohort.tasks:
        y = a[0][t]["y"]
        for run in a + b:
            if not np.array_equal(run[t]["y"], y, equal_nan=True):
                raise RuntimeError(f"{c.label}: arms scored on different records ({t})")
        d = H.paired_difference(y, [r[t]["p"] for r in a], [r[t]["p"] for r in b], n_boot=args.boot)
        d["positives"] = np.nansum(y, 0).astype(int).tolist()
        d["evaluated"] = int((~np.isnan(y).all(1)).sum())
        out["tasks"][t] = d
    out["runs"] = {"a": [r["_meta"] for r in a], "b": [r["_meta"] for r in b]}
    return out


def decomposition(args, built: dict, experiments: dict) -> list[dict]:
    """For every comparison with a ``factor`` among the experiments run: how far it moves the synthetic gap
    (its gap minus FedAvg-on-natural-sites' gap, a difference of paired differences with a bootstrap CI over
    records and seeds), or with ``effect`` the comparison itself. From the cached runs only."""
    base = EXPERIMENTS["main"][1][0]
    rows = []
    for name, (_, comparisons) in EXPERIMENTS.items():
        for c in comparisons:
            if c.factor is None or name not in experiments:
                continue
            seeds = [s for s in args.seeds if c.seeds is None or s in c.seeds]
            cohort, natural = cohort_of(c.cohort, args, built), cohort_of(base.cohort, args, built)
            arms = [[run_arm(coh, resolve(arm, args), args, s, cached_only=True) for s in seeds]
                    for coh, arm in ((cohort, c.a), (cohort, c.b), (natural, base.a), (natural, base.b))]
            if any(r is None for arm in arms for r in arm):
                continue
            a, b, fed, pooled = arms
            plus, minus = ([a], [b]) if c.effect else ([a, pooled], [b, fed])
            row = {"factor": c.factor, "comparison": c.label, "effect": c.effect, "seeds": seeds, "tasks": {}}
            for t in cohort.tasks:
                y = fed[0][t]["y"]
                row["tasks"][t] = {
                    "gap": H.contrast(y, [[r[t]["p"] for r in a]], [[r[t]["p"] for r in b]], n_boot=args.boot)["diff"],
                    "natural_gap": H.contrast(y, [[r[t]["p"] for r in fed]], [[r[t]["p"] for r in pooled]],
                                              n_boot=args.boot)["diff"],
                    "change": H.contrast(y, [[r[t]["p"] for r in arm] for arm in plus],
                                         [[r[t]["p"] for r in arm] for arm in minus], n_boot=args.boot)}
            rows.append(row)
    return rows


def describe(arm: Arm) -> str:
    parts = [arm.kind] + [f"{k} {v}" for k, v in arm.run_config.items()]
    if arm.kind == "pooled":
        parts += [f"mode {arm.mode}", f"{arm.pos_weights} positive weights"]
        parts += ["a new Adam every epoch"] if arm.fresh_optimizer else []
    if arm.epsilon is not None:
        parts.append(f"epsilon {arm.epsilon:g}")
    return ", ".join(parts)


def summarise(results: dict) -> dict:
    s = {}
    for exp in results.get("experiments", {}).values():
        for row in exp["comparisons"]:
            for t, d in row["tasks"].items():
                s[f"{row['label']}: {t} AUROC difference [95% CI]"] = \
                    f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
    return s


def cohort_arguments(p: argparse.ArgumentParser) -> None:
    """The cohorts' and runs' options, shared with the benchmarks that score this module's runs."""
    p.add_argument("--records", type=int, default=1000, help="synthetic records per site (default 1000)")
    p.add_argument("--eval-share", type=float, default=0.3,
                   help="share of each synthetic site's patients held out (default 0.3: ~1,500 scored records, "
                        "hundreds of positives per task)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    p.add_argument("--local-epochs", type=int, default=1, help="local epochs per round (default 1); pooled training "
                   "runs rounds x local epochs epochs")
    p.add_argument("--synthetic-checkpoint", type=Path, default=None,
                   help="default: the simulation's quick synthetic pretraining (cached)")
    p.add_argument("--real-checkpoint", default="compact-ptbxl-ludb",
                   help="pretrained on PTB-XL folds 1-9 + LUDB (default: the shipped compact-ptbxl-ludb)")
    p.add_argument("--work", type=Path, default=H.REPO / "runs" / "bench-federation",
                   help="cohorts, site state and the cache of every run's scores (default runs/bench-federation)")


def prepare(args: argparse.Namespace) -> None:
    args.work = args.work.resolve()
    H.quiet_sites()
    if args.synthetic_checkpoint is None:
        args.synthetic_checkpoint = H.synthetic_checkpoint()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.federation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(EXPERIMENTS),
                   help=f"comma-separated subset of {', '.join(EXPERIMENTS)} (empty: only rewrite the results file "
                        "from the cached runs)")
    cohort_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds, paired across arms (default 0 1 2)")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    args = p.parse_args(argv)
    started = time.monotonic()
    prepare(args)
    results = H.read_results(RESULT)
    experiments = results.get("experiments", {})
    built: dict[str, Cohort] = {}

    def write(decompose: bool) -> dict:
        body = {"summary": summarise({"experiments": experiments}), "experiments": experiments}
        if decompose:
            body["decomposition"] = decomposition(args, built, experiments)
        command = H.joined_commands(e.get("command") or H.command_line("federation", ["--only", n])
                                    for n, e in experiments.items())
        return H.write_results(H.RESULTS / RESULT, H.meta("federation", argv, started, command=command), body)

    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        question, comparisons = EXPERIMENTS[name]
        print(f"== {name}: {question}", flush=True)
        experiments[name] = {"question": question, "rounds": args.rounds, "local_epochs": args.local_epochs,
                             "records_per_site": args.records, "command": H.command_line("federation", argv),
                             "comparisons": [compare(c, args, built) for c in comparisons]}
        write(decompose=False)
    body = write(decompose=True)
    print(json.dumps(body["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
