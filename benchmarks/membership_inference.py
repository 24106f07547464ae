"""Membership-inference audit: a loss-threshold attack on a site's fine-tuned model, with and without DP.

The attacker holds the fine-tuned model (what a site's update reveals, or the final global
model) and a record, and guesses "this record was in the training set" when the model's loss on
it is low. Members are the site's training records, non-members its held-out (patient-disjoint)
records; the attack's AUROC is the AUROC of ``-loss`` for members vs non-members. 0.5 means the
loss tells nothing about membership. DP-SGD bounds any such attack: at (epsilon, delta) the
attack's TPR <= e^epsilon * FPR + delta, so small epsilon pushes the AUROC toward 0.5, while a
model trained without DP for many epochs on few records memorises them and the AUROC rises.

Training is exactly a site's: :func:`lsemvae.federation.site_round.train` answers a train
instruction of one round holding all the epochs (its groups frozen as in federation, the noise
multiplier planned by the site for its budget, Opacus DP-SGD with the site's own Poisson sampling and
noise, the round recorded in its privacy ledger). The achieved epsilon is the site's ledger's. The
model starts from a random initialisation (no pretraining), the setting in which a small site's
fine-tuning memorises most.

    python -m benchmarks.membership_inference            # synthetic site, no DP / eps 8 / eps 1 (~2 min here)
    python -m benchmarks.membership_inference --quick    # smaller, fewer epochs (~1-2 min)
    python -m benchmarks.membership_inference --site-config configs/sites/ptbxl-site1.toml --records 240 \
        --out benchmarks/results/membership_inference_ptbxl.json                      # a real PTB-XL site

Writes benchmarks/results/membership_inference.json (or --out).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness as H

TASKS = ("right_heart", "left_atrial")


def _site(fields: dict, workdir: Path):
    from lsemvae.site import SiteConfig

    return SiteConfig.model_validate({
        **fields, "name": "mia-site", "state_dir": str(workdir / "state"), "anchor_dir": str(workdir / "anchors"),
        "privacy": {"epsilon": 100.0, "delta": 1e-5, "max_grad_norm": 1.0, "allow_non_dp": True},
        "limits": {"max_local_epochs": 1000},   # every epoch in one round: the audit's site allows it
        "connection": {"superlink": "127.0.0.1:8000"}})


def synthetic_site(workdir: Path, records: int, seed: int):
    """One synthetic 12-lead site (the default cohort's first hospital), half its patients held out."""
    from lsemvae.data.synthetic import default_cohort, spec_with_overrides, write_cohort

    spec = spec_with_overrides(default_cohort(), sites=1, records=records, seed=seed)
    write_cohort(spec, workdir / "cohort", progress=False)
    site = spec.sites[0].name
    return _site({"leads": "12L", "tasks": [{"name": t, "column": t} for t in TASKS],
                  "data": {"format": "manifest", "root": str(workdir / "cohort" / site / "records"),
                           "labels": str(workdir / "cohort" / site / "labels.csv"), "val_fraction": 0.5}}, workdir)


def real_site(path: Path, workdir: Path, max_records: int | None):
    from lsemvae.site import load_site_config

    cfg = load_site_config(path)
    data = cfg.data.model_copy(update={"val_fraction": 0.5, "max_records": max_records or cfg.data.max_records})
    return _site({"leads": cfg.leads, "tasks": [t.model_dump() for t in cfg.tasks], "data": data.model_dump()}, workdir)


def build(tasks: dict):
    from lsemvae.model.config import TaskHeadSpec, get_profile
    from lsemvae.model.lsemvae import build_model

    heads = {name: TaskHeadSpec(kind=t.kind, n_outputs=t.n_outputs) for name, t in tasks.items()}
    return build_model(get_profile("compact", encoder_channels=(16, 16, 32), encoder_kernels=(7, 5, 5),
                                   encoder_strides=(4, 4, 4), latent_dim=32, gate_hidden=16, decoder_hidden=16,
                                   head_hidden=32, tasks=heads))


@torch.no_grad()
def per_record_loss(model, data, site, indices) -> np.ndarray:
    from lsemvae.federation.training import task_kinds
    from lsemvae.model.losses import per_record_loss as loss

    model.eval()
    ds = data.dataset(indices, site.lead_names)
    out = []
    for start in range(0, len(ds), 64):
        items = [ds[i] for i in range(start, min(start + 64, len(ds)))]
        x = torch.stack([it["x"] for it in items])
        mask = torch.stack([it["lead_mask"] for it in items])
        y = {t: torch.stack([it["y"][t] for it in items]) for t in data.tasks}
        out.append(loss(model(x, mask, decode=False).logits, y, task_kinds(data.tasks)).numpy())
    return np.concatenate(out)


def attack(member_loss: np.ndarray, nonmember_loss: np.ndarray, *, boot: int = 1000, seed: int = 0) -> dict:
    """Loss-threshold attack: AUROC of -loss (members positive), its bootstrap 95% CI, best TPR-FPR."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(member_loss)), np.zeros(len(nonmember_loss))]
    s = -np.r_[member_loss, nonmember_loss]
    auc = float(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s)
    rng = np.random.default_rng(seed)
    m, n = len(member_loss), len(nonmember_loss)
    boots = [roc_auc_score(y, np.r_[-member_loss[rng.integers(0, m, m)], -nonmember_loss[rng.integers(0, n, n)]])
             for _ in range(boot)]
    return {"auroc": auc, "auroc_ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "advantage": float(np.max(tpr - fpr)), "members": m, "non_members": n,
            "member_loss_mean": float(member_loss.mean()), "non_member_loss_mean": float(nonmember_loss.mean())}


def utility(model, data, site) -> dict:
    """Held-out AUROC per task (what the privacy costs)."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    ds = data.dataset(data.eval_idx, site.lead_names)
    scores = {t: [] for t in data.tasks}
    ys = {t: [] for t in data.tasks}
    with torch.no_grad():
        for start in range(0, len(ds), 64):
            items = [ds[i] for i in range(start, min(start + 64, len(ds)))]
            logits = model(torch.stack([it["x"] for it in items]), torch.stack([it["lead_mask"] for it in items]),
                           decode=False).logits
            for t in data.tasks:
                scores[t].append(torch.sigmoid(logits[t][:, 0]).numpy())
                ys[t].append(torch.stack([it["y"][t][0] for it in items]).numpy())
    out = {}
    for t in data.tasks:
        y, s = np.concatenate(ys[t]), np.concatenate(scores[t])
        ok = ~np.isnan(y)
        out[t] = float(roc_auc_score(y[ok], s[ok])) if len(set(y[ok])) == 2 else None
    return out


def run_setting(site, data, pre_json: str, *, epsilon: float | None, epochs: int, batch: int, lr: float,
                seed: int) -> dict:
    """One training of the site, through the site's own round, from a fresh budget of ``epsilon``."""
    import shutil

    from lsemvae.federation.groups import federated
    from lsemvae.federation.messages import Instruction
    from lsemvae.federation.site_round import train

    for old in (site.ledger_path, site.state_dir / "plans", site.anchor_dir):   # each setting: a fresh budget
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    if epsilon is not None:
        site = site.model_copy(update={"privacy": site.privacy.model_copy(update={
            "epsilon": epsilon, "run_epsilon": epsilon, "max_noise_multiplier": 1000.0})})
    torch.manual_seed(seed)
    model = build(data.tasks)
    ins = Instruction(job_id=f"{seed:016x}", server_round=1, num_server_rounds=1, local_epochs=epochs, lr=lr,
                      batch_size=batch, proximal_mu=0.0, dp=epsilon is not None, train_encoders=True, evaluate=False,
                      update_dtype="float32", seed=seed, model_config_json=model.config.model_dump_json(),
                      preprocess_config_json=pre_json)
    started = time.perf_counter()
    # All epochs as one round: the site plans its noise for every step, its ledger records all of them.
    reply, arrays = train(site, ins, {k: v.numpy() for k, v in federated(model.state_dict()).items()})
    seconds = time.perf_counter() - started
    state = model.state_dict()
    state.update({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    model.load_state_dict(state)
    row = {"setting": "no DP" if epsilon is None else f"DP epsilon {epsilon:g}", "target_epsilon": epsilon,
           "noise_multiplier": reply.noise_multiplier or None, "epochs": epochs,
           "steps": epochs * math.ceil(len(data.train_idx) / batch), "batch_size": batch, "lr": lr,
           "train_seconds": round(seconds, 1)}
    if epsilon is not None:
        row["achieved_epsilon"] = reply.epsilon
    row["attack"] = attack(per_record_loss(model, data, site, data.train_idx),
                           per_record_loss(model, data, site, data.eval_idx), seed=seed)
    row["held_out_auroc"] = utility(model, data, site)
    return row


def summary(rows: list[dict]) -> dict:
    out = {}
    for row in rows:
        a = row["attack"]
        eps = f" (ledger {row['achieved_epsilon']:.2f})" if row.get("achieved_epsilon") else ""
        out[f"{row['setting']}{eps}: attack AUROC [95% CI]"] = \
            f"{a['auroc']:.3f} [{a['auroc_ci95'][0]:.3f}, {a['auroc_ci95'][1]:.3f}]"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.membership_inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer records and epochs (a smoke run, ~1-2 min)")
    p.add_argument("--site-config", type=Path, help="a site TOML (e.g. configs/sites/ptbxl-site1.toml) instead of "
                   "the synthetic site")
    p.add_argument("--records", type=int, default=240, help="synthetic records (half train, half held out)")
    p.add_argument("--epochs", type=int, default=30, help="local epochs (all in one DP plan)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--epsilons", default="8,1", help="comma-separated DP targets (delta 1e-5), besides no DP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=H.RESULTS / "membership_inference.json")
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.epochs = min(args.records, 96), min(args.epochs, 8)
    torch.set_num_threads(1)
    from lsemvae.federation.runtime import load_site_data
    from lsemvae.model.config import get_profile

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mia-") as tmp:
        work = Path(tmp)
        if args.site_config:
            site = real_site(args.site_config, work, args.records)
        else:
            site = synthetic_site(work, args.records, args.seed)
        pre_json = get_profile("compact").preprocess_config().model_dump_json()
        data = load_site_data(site, pre_json)
        print(f"site {site.name}: {len(data.train_idx)} members (training), {len(data.eval_idx)} non-members "
              f"(held out); tasks {list(data.tasks)}", flush=True)
        settings = [None] + [float(e) for e in args.epsilons.split(",") if e.strip()]
        rows = []
        for eps in settings:
            row = run_setting(site, data, pre_json, epsilon=eps, epochs=args.epochs, batch=args.batch_size,
                              lr=args.lr, seed=args.seed)
            a = row["attack"]
            print(f"{row['setting']:>16}: attack AUROC {a['auroc']:.3f} [{a['auroc_ci95'][0]:.3f}, "
                  f"{a['auroc_ci95'][1]:.3f}], advantage {a['advantage']:.3f}; "
                  f"held-out AUROC {row['held_out_auroc']}; {row['train_seconds']} s", flush=True)
            rows.append(row)
    result = {
        "what": "loss-threshold membership-inference attack on a site's fine-tuned LS-EMVAE (members = training "
                "records, non-members = held-out patients of the same site); AUROC of -loss",
        "expected": "without DP the model memorises its few training records and the attack AUROC rises above 0.5; "
                    "DP-SGD bounds the attack (TPR <= e^eps * FPR + delta), so the AUROC moves toward 0.5 as "
                    "epsilon falls. An AUROC near 0.5 with DP is the expected outcome, not a proof of privacy: the "
                    "guarantee is the accountant's epsilon, this audit is a sanity check that nothing bypasses it.",
        "data": str(args.site_config) if args.site_config else f"synthetic site ({args.records} records, seed {args.seed})",
        "delta": site.privacy.delta, "max_grad_norm": site.privacy.max_grad_norm, "quick": args.quick,
        "settings": rows, "summary": summary(rows),
    }
    H.write_results(args.out, H.meta("membership_inference", argv, started), result)
    print(f"wrote {args.out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
