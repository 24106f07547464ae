"""Communication: bytes per site per round, up and down, and the accuracy cost of float16 updates.

    python benchmarks/communication.py --seeds 0 1 --dp-epsilon 8   # as committed: 6 runs, ~25 min on 2 busy cores
    python benchmarks/communication.py --bytes-only      # seconds: recompute bytes, keep the measured runs

Writes benchmarks/results/communication.json:

* ``computed``: bytes on the wire per site per round for the compact and faithful profiles, 12-lead
  and 6-lead sites, float32 and float16 (run config ``update-dtype``), from the parameter shapes of
  the built model (on PyTorch's meta device: the 256 M-parameter faithful model is never
  allocated), with task heads as the federation builds them (run config ``head-input``). Up = the
  groups a site trained (its leads' encoders, fusion, its task heads); ``up_probe`` = what it sends
  under DP by default (run config ``train-encoders = "auto"``: fusion and heads); ``down_probe`` = what
  the server sends it per round under the probe once it holds the frozen encoders (they travel once:
  fusion and heads, train + evaluate); down = every federated
  group, sent twice per round (train message, then the evaluation broadcast of the aggregated
  model). Counted as Flower serialises each tensor (``flwr.app.Array``: .npy bytes, i.e. the
  values plus a 128-byte header per tensor), exactly what the ServerApp logs; the message
  envelope (config, metrics) adds a few kB.
* ``float16_rounding``: the float16 round trip of the pretrained compact checkpoint's federated
  weights (maximum and L2 relative error).
* ``runs``: pairs of same-seed synthetic federations (simulation/run.py, 3 sites: two 12-lead, one
  6-lead) with update-dtype float32 and float16: final pooled AUROC per task and its difference,
  how far apart the two final models are (next to how far fine-tuning moved the weights), and the
  bytes the ServerApp logged (``metrics.jsonl``). A simulation with a given seed is deterministic
  (tests/reliability/test_resume_equivalence.py; DP noise is seeded by the run too), so within a
  pair the float16 rounding is the only difference. ``--dp-epsilon E`` adds a DP pair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TASKS = ("right_heart", "left_atrial")     # the simulation's federation tasks
DTYPES = ("float32", "float16")


def machine() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} cores (shared; load {load}), torch {torch.__version__}, "
            f"1 thread per process")


def npy_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Length of ``flwr.app.Array(ndarray).data`` (np.save format) without building the array."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize


def computed_bytes() -> dict:
    """Bytes per site per round from the parameter shapes of each profile (meta device: no memory)."""
    import torch
    from flwr.app import Array

    from lsemvae.data.tasks import get_task
    from lsemvae.federation.codec import encode
    from lsemvae.federation.groups import federated, groups_for, select
    from lsemvae.leads import LEADS_12, LIMB_LEADS
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.site import FederationConfig

    tasks = {t: {"kind": get_task(t).kind, "n_outputs": get_task(t).n_outputs} for t in TASKS}
    run = FederationConfig()   # the federation's fresh heads follow the run config (head-input), not the profile
    heads = {"tasks": tasks, "head_input": run.head_input, "head_dropout": run.head_dropout}
    out = {}
    for profile in ("compact", "faithful"):
        with torch.device("meta"):
            model = build_model(get_profile(profile, **heads))
        state = model.state_dict()
        sent = federated(state)
        numel_down = sum(v.numel() for v in sent.values())
        row = {"parameters_total": sum(v.numel() for v in state.values()), "parameters_federated": numel_down,
               "tensors_federated": len(sent), "head_input": run.head_input}
        for leads_name, leads in (("12L", LEADS_12), ("6L", LIMB_LEADS)):
            groups = groups_for(leads, TASKS)
            up = select(sent, groups)
            up_probe = select(sent, {g for g in groups if not g.startswith("encoders.")})
            for dtype in DTYPES:
                down = sum(npy_bytes(tuple(v.shape), dtype) for v in sent.values())
                slim = sum(npy_bytes(tuple(v.shape), dtype) for k, v in sent.items() if not k.startswith("encoders."))
                row[f"{leads_name}/{dtype}"] = {"up": sum(npy_bytes(tuple(v.shape), dtype) for v in up.values()),
                                                "up_probe": sum(npy_bytes(tuple(v.shape), dtype)
                                                                for v in up_probe.values()),
                                                "down_train": down, "down_evaluate": down, "down": 2 * down,
                                                "down_probe": 2 * slim}
        out[profile] = row
    # the shape-based count is what Flower really serialises (checked on the small compact model)
    real = {k: v.numpy() for k, v in federated(build_model(get_profile("compact", **heads)).state_dict()).items()}
    for dtype in DTYPES:
        serialised = sum(len(Array(v).data) for v in encode(real, dtype).values())
        assert serialised == out["compact"][f"12L/{dtype}"]["down_train"], (dtype, serialised)
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def float16_rounding(checkpoint: Path) -> dict:
    import numpy as np

    from lsemvae.federation.codec import decode, encode
    from lsemvae.federation.groups import federated
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    w = {k: v.detach().numpy() for k, v in federated(model.state_dict()).items()}
    back = decode(encode(w, "float16"), "float16", sender="benchmark")
    diff = np.concatenate([(back[k].astype(np.float64) - w[k]).ravel() for k in w])
    ref = np.concatenate([w[k].astype(np.float64).ravel() for k in w])
    nz = ref != 0
    return {"parameters": int(ref.size), "max_abs_error": float(np.abs(diff).max()),
            "max_relative_error": float((np.abs(diff[nz]) / np.abs(ref[nz])).max()),
            "l2_relative_error": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
            "largest_abs_weight": float(np.abs(ref).max()),
            # below float16's smallest normal number the relative error grows (subnormals): how many weights
            "share_below_float16_normal": float(np.mean(np.abs(ref[nz]) < np.finfo(np.float16).tiny))}


def federated_run(out: Path, args, dtype: str, seed: int, dp_epsilon: float | None) -> dict:
    # a fresh folder: an earlier run's site ledgers would carry its privacy spending into this one
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--epsilon", str(dp_epsilon)] if dp_epsilon else ["--no-dp"]
    cmd = [sys.executable, str(REPO / "simulation" / "run.py"), "--sites", "3", "--records", str(args.records),
           "--rounds", str(args.rounds), "--seed", str(seed), "--out", str(out), "--checkpoint", str(args.checkpoint),
           "--update-dtype", dtype, "--eval-bins", "1000", *extra]
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "server" / "metrics.jsonl").read_text().splitlines()]
    return {"command": " ".join(["python", "simulation/run.py", *cmd[2:]]).replace(str(REPO) + "/", ""),
            "wall_seconds": round(time.monotonic() - started, 1),
            "auroc": rows[-1]["auroc"], "auroc_per_round": [r["auroc"] for r in rows],
            "seconds_per_round": [round(r["seconds"], 1) for r in rows],
            "bytes_per_site_per_round": rows[-1]["bytes"]}


def weight_gaps(out: Path, tag: str) -> dict:
    """How far the float16 run's final weights are from the float32 run's, next to how far fine-tuning moved them."""
    import numpy as np

    from lsemvae.federation.groups import federated
    from lsemvae.site import federation_config
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint
    from server.server_app import initial_state

    def final(dtype: str) -> dict:
        ckpt = load_checkpoint(out / f"{tag}-{dtype}" / "server" / "final-model.pt")
        return {k: v.double().numpy() for k, v in federated(model_from_checkpoint(ckpt).state_dict()).items()}

    def dist(a: dict, b: dict) -> float:
        return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))

    w32, w16 = final("float32"), final("float16")
    fed = federation_config(json.loads((out / f"{tag}-float32" / "server" / "run-config.json").read_text()))
    w0 = {k: v.astype(np.float64) for k, v in federated(initial_state(fed).model).items()}
    norm = float(np.sqrt(sum((v ** 2).sum() for v in w0.values())))
    return {"final_weights_relative_l2_gap": dist(w16, w32) / norm,
            "fine_tuning_relative_l2_change": dist(w32, w0) / norm}


def summary(results: dict) -> dict:
    """Flat {label: value} for benchmarks/summarise.py."""
    s = {}
    for profile, row in results["computed"].items():
        for key, b in row.items():
            if isinstance(b, dict):
                s[f"{profile} {key} up MB"] = round(b["up"] / 1e6, 3)
                s[f"{profile} {key} up under DP (probe, the default) MB"] = round(b["up_probe"] / 1e6, 4)
                s[f"{profile} {key} down under DP after the first message (probe) MB"] = round(b["down_probe"] / 1e6, 4)
                s[f"{profile} {key} down MB (train + evaluate)"] = round(b["down"] / 1e6, 3)
    for pair in results.get("runs", []):
        for task, d in pair["auroc_difference"].items():
            s[f"float16 - float32 AUROC {task} ({pair['label']})"] = round(d, 4)
    return s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=400, help="synthetic records per site (default 400)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="run seeds (cohort, heads, sampling); one pair each")
    p.add_argument("--dp-epsilon", type=float, default=None, help="also a DP pair at this epsilon (first seed)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-communication")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the simulation's cached quick pretraining")
    p.add_argument("--bytes-only", action="store_true", help="computed bytes and rounding only, no federated runs")
    args = p.parse_args()
    args.out = args.out.resolve()
    res = REPO / "benchmarks" / "results" / "communication.json"
    old = json.loads(res.read_text()) if args.bytes_only and res.is_file() else {}
    if args.checkpoint is None and old.get("checkpoint"):   # the checkpoint the kept runs fine-tuned
        args.checkpoint = REPO / old["checkpoint"]
    if args.checkpoint is None:
        from simulation.run import parse_args, pretrained_checkpoint

        args.checkpoint = pretrained_checkpoint(parse_args([]))
    args.checkpoint = args.checkpoint.resolve()
    command = "python benchmarks/communication.py " + " ".join(sys.argv[1:])
    results = {"what": "bytes per site per round up/down (compact, faithful; float32, float16) and the AUROC cost of "
                       "float16 updates in same-seed synthetic federations",
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "checkpoint": _rel(args.checkpoint), "tasks": list(TASKS), "computed": computed_bytes(),
               "float16_rounding": float16_rounding(args.checkpoint)}
    if not args.bytes_only:
        pairs = [(seed, None) for seed in args.seeds] + ([(args.seeds[0], args.dp_epsilon)] if args.dp_epsilon else [])
        results["runs"] = []
        for seed, eps in pairs:
            label = f"seed {seed}, " + (f"DP epsilon {eps:g}" if eps else "no DP")
            tag = f"seed{seed}-" + (f"dp{eps:g}" if eps else "nodp")
            runs = {}
            for dtype in DTYPES:
                print(f"{label}: update-dtype {dtype}", flush=True)
                runs[dtype] = federated_run(args.out / f"{tag}-{dtype}", args, dtype, seed, eps)
            diff = {t: runs["float16"]["auroc"][t] - runs["float32"]["auroc"][t] for t in runs["float32"]["auroc"]}
            gaps = weight_gaps(args.out, tag)
            results["runs"].append({"label": label, "tag": tag, "seed": seed, "dp_epsilon": eps, "sites": 3,
                                    "records_per_site": args.records, "rounds": args.rounds, "runs": runs,
                                    "auroc_difference": diff, **gaps})
            print(f"{label}: AUROC float16 - float32 {diff}, weights {gaps}", flush=True)
    results["summary"] = summary(results)
    results["command"] = command.strip()
    results["machine"] = machine()
    if "runs" in old:   # --bytes-only keeps the measured runs of an earlier full run
        results["runs"], results["command"], results["machine"] = old["runs"], old["command"], old["machine"]
        for pair in results["runs"]:   # weight statistics from the run folders, when they are still there
            tag = pair["tag"]
            if all((args.out / f"{tag}-{d}" / "server" / "final-model.pt").is_file() for d in DTYPES):
                pair.update(weight_gaps(args.out, tag))
        results["summary"] = summary(results)
    res.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
