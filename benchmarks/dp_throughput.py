"""DP-SGD vs non-DP training throughput (ECGs/s) for a model shaped like the compact LS-EMVAE encoders.

Per-lead conv encoders (the ``compact`` profile: 16/32/64/64 channels, kernels 7/5/5/5, stride 2,
GroupNorm, GELU, avg+max pooling, linear to (mu, logvar)), one per limb lead, mean-fused latent and
a linear binary head, trained on random [B, 6, 1000] data. For each batch size it times plain
training and DP-SGD through :func:`lsemvae.privacy.dp.make_private` with the grad-sample modes
``hooks``, ``functorch`` and ``ghost`` (fixed batches, no Poisson sampling, so every mode sees the
same batch sizes); ``-fastconv`` modes use :func:`lsemvae.privacy.dp.conv1d_grad_sample` for the
Conv1d per-sample gradients instead of Opacus' im2col-based one. Modes are interleaved over repeats and the median is kept, which matters on a
shared 2-core machine.

    python -m benchmarks.dp_throughput                    # defaults, < 2 min
    python -m benchmarks.dp_throughput --batch-sizes 32 64 128 --steps 8 --repeats 3

Writes benchmarks/results/dp_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from benchmarks import harness as H
from lsemvae.privacy.dp import make_private

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF")
MODES = ("non-dp", "hooks", "hooks-fastconv", "functorch", "ghost", "ghost-fastconv")


class LeadEncoder(nn.Module):
    def __init__(self, latent: int = 64, channels=(16, 32, 64, 64), kernels=(7, 5, 5, 5)):
        super().__init__()
        layers, c_in = [], 1
        for c, k in zip(channels, kernels):
            layers += [nn.Conv1d(c_in, c, k, stride=2, padding=k // 2), nn.GroupNorm(4, c), nn.GELU()]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(2 * c_in, 2 * latent)

    def forward(self, x):
        h = self.conv(x)
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], dim=1))


class PerLeadModel(nn.Module):
    def __init__(self, latent: int = 64):
        super().__init__()
        self.encoders = nn.ModuleDict({lead: LeadEncoder(latent) for lead in LEADS})
        self.head = nn.Linear(latent, 1)
        self.latent = latent

    def forward(self, x):
        stats = torch.stack([enc(x[:, i : i + 1]) for i, enc in enumerate(self.encoders.values())], dim=1)
        mu, logvar = stats[..., : self.latent], stats[..., self.latent :]
        return self.head(mu.mean(1)).squeeze(1), mu, logvar


def loss_per_sample(model, x, y):
    logit, mu, logvar = model(x)
    bce = nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2))
    return bce + 1e-3 * kl


def time_mode(mode: str, batch_size: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    n = batch_size * (steps + warmup)
    data = TensorDataset(torch.randn(n, len(LEADS), 1000), torch.randint(0, 2, (n,)).float())
    model = PerLeadModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=True)
    session = None
    if mode != "non-dp":
        model, opt, loader, session = make_private(
            model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson=False,
            grad_sample_mode=mode.removesuffix("-fastconv"), fast_conv1d=mode.endswith("-fastconv"),
        )
    model.train()
    start = None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad()
        losses = loss_per_sample(model, x, y)
        if session is None:
            losses.mean().backward()
        else:
            session.backward(losses)
        opt.step()
    return batch_size * steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dp_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64], help="batch sizes to time")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=H.RESULTS / "dp_throughput.json"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    torch.set_num_threads(args.threads)

    runs = {(b, m): [] for b in args.batch_sizes for m in args.modes}
    jobs = [(r, b, m) for r in range(args.repeats) for b in args.batch_sizes for m in args.modes]
    for _, b, m in tqdm(jobs, desc="timing", unit="run"):
        runs[(b, m)].append(time_mode(m, b, args.steps, args.warmup))

    results = []
    for b in args.batch_sizes:
        base = runs[(b, "non-dp")] if "non-dp" in args.modes else None
        for m in args.modes:
            med = statistics.median(runs[(b, m)])
            # Paired ratio: each repeat's DP run against the non-DP run timed just before it, so load
            # changes from other users between repeats cancel out; median over repeats.
            ratio = statistics.median(v / base[r] for r, v in enumerate(runs[(b, m)])) if base else None
            results.append(
                {
                    "batch_size": b,
                    "mode": m,
                    "ecgs_per_s": round(med, 1),
                    "all_runs": [round(v, 1) for v in runs[(b, m)]],
                    "ratio_to_non_dp": round(ratio, 3) if base else None,
                }
            )
            print(f"batch {b:4d}  {m:15s} {med:8.1f} ECG/s" + (f"  {ratio:6.1%} of non-DP" if base else ""))
    H.write_results(args.out, H.meta("dp_throughput", argv, started), {
        "what": "training throughput, per-lead conv encoders (compact profile shape), 6 leads x 1000 samples",
        "threads": args.threads, "load_average_at_end": list(os.getloadavg()), "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
