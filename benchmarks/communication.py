"""Communication: bytes per site per round, up and down, and the accuracy cost of float16 updates.

    python -m benchmarks.communication                   # as committed: 4 runs, ~15 min on 2 busy cores
    python -m benchmarks.communication --bytes-only      # seconds: recompute bytes, keep the measured runs

Writes benchmarks/results/communication.json:

* ``computed``: bytes on the wire per site per round for the compact and faithful profiles, 12-lead
  and 6-lead sites, float32 and float16 (run config ``update-dtype``), from the parameter shapes of
  the built model (on PyTorch's meta device: the 256 M-parameter faithful model is never
  allocated), with task heads as the federation builds them (run config ``head-input``). Up = the
  groups a site trained (its leads' encoders, fusion, its task heads); ``up_probe`` = what it sends
  under DP by default (run config ``train-encoders = "auto"``: fusion and heads); ``down_probe`` = what
  the server sends it per round under the probe once it holds the frozen encoders (they travel once:
  fusion and heads); down = every federated group, in the round's one message (the train instruction: the
  site evaluates the model it receives before training it, and sends the result with its update). The
  last model's evaluation broadcast, once per job after the last round, is ``down_evaluate``. Counted as
  the codec packs them (:func:`lsemvae.federation.codec.pack`: every array's values end
  to end in one buffer per message); the message body (instruction or reply, with the buffer's layout)
  adds a few kB.
* ``float16_rounding``: the float16 round trip of the pretrained compact checkpoint's federated
  weights (maximum and L2 relative error).
* ``runs``: pairs of same-seed synthetic federations without DP (the library's round in one process,
  :func:`benchmarks.harness.federate`; 3 sites: two 12-lead, one 6-lead) with update-dtype float32 and
  float16: final pooled AUROC per task (exact, on the sites' held-out records) and its difference, how far
  apart the two final models are (next to how far fine-tuning moved the weights), and the bytes the
  server measured per site (``bytes`` of its metrics row). A non-DP job with a given seed is deterministic
  (tests/reliability/test_resume_equivalence.py), so within a pair the float16 rounding is the only
  difference. No DP pair: under DP every site draws its noise and batches from its own OS randomness, so
  two runs differ by their noise, far more than by the rounding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import harness as H

REPO = H.REPO
TASKS = ("right_heart", "left_atrial")     # the simulation's federation tasks
DTYPES = ("float32", "float16")


def wire_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of one array in a message's packed buffer (:func:`lsemvae.federation.codec.pack`: values only)."""
    import numpy as np

    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def computed_bytes() -> dict:
    """Bytes per site per round from the parameter shapes of each profile (meta device: no memory)."""
    import torch

    from lsemvae.data.tasks import get_task
    from lsemvae.federation.codec import pack
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
                size = lambda arrays: sum(wire_bytes(tuple(v.shape), dtype) for v in arrays.values())  # noqa: E731
                down = size(sent)
                slim = size({k: v for k, v in sent.items() if not k.startswith("encoders.")})
                row[f"{leads_name}/{dtype}"] = {"up": size(up), "up_probe": size(up_probe), "down": down,
                                                "down_probe": slim, "down_evaluate": down}
        out[profile] = row
    # the shape-based count is what the codec really packs (checked on the small compact model)
    real = {k: v.numpy() for k, v in federated(build_model(get_profile("compact", **heads)).state_dict()).items()}
    for dtype in DTYPES:
        packed = pack(real, dtype)[0].nbytes
        assert packed == out["compact"][f"12L/{dtype}"]["down"], (dtype, packed)
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def float16_rounding(checkpoint: Path) -> dict:
    import numpy as np

    from lsemvae.federation.codec import pack, unpack
    from lsemvae.federation.groups import federated
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    w = {k: v.detach().numpy() for k, v in federated(model.state_dict()).items()}
    back = unpack(*pack(w, "float16"), "float16", sender="benchmark")
    diff = np.concatenate([(back[k].astype(np.float64) - w[k]).ravel() for k in w])
    ref = np.concatenate([w[k].astype(np.float64).ravel() for k in w])
    nz = ref != 0
    return {"parameters": int(ref.size), "max_abs_error": float(np.abs(diff).max()),
            "max_relative_error": float((np.abs(diff[nz]) / np.abs(ref[nz])).max()),
            "l2_relative_error": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
            "largest_abs_weight": float(np.abs(ref).max()),
            # below float16's smallest normal number the relative error grows (subnormals): how many weights
            "share_below_float16_normal": float(np.mean(np.abs(ref[nz]) < np.finfo(np.float16).tiny))}


def federated_run(sites, args, dtype: str, seed: int):
    """One non-DP job through the library's round; returns its measurements and its final server state."""
    import numpy as np

    started = time.monotonic()
    rc = {"checkpoint": str(args.checkpoint), "tasks": ",".join(TASKS), "num-server-rounds": args.rounds,
          "dp": False, "seed": seed, "update-dtype": dtype}
    state = H.federate(sites, rc, args.out / f"seed{seed}-{dtype}")
    scores = H.exact_scores(H.model_of(state), sites, state.preprocess_config)
    rows = state.metrics
    return {"wall_seconds": round(time.monotonic() - started, 1),
            "auroc": {t: H.macro_auroc(v["y"], v["p"]) for t, v in scores.items()},
            "private_auroc_per_round": [r["auroc"] for r in rows],
            "seconds_per_round": [round(r["seconds"], 1) for r in rows],
            "bytes_per_site_per_round": rows[-1]["bytes"],
            "_final": {k: v.astype(np.float64) for k, v in state.model.items()}}, state


def weight_gaps(w32: dict, w16: dict, state) -> dict:
    """How far the float16 run's final weights are from the float32 run's, next to how far fine-tuning moved them."""
    import numpy as np

    from lsemvae.federation.groups import federated
    from lsemvae.federation.server_round import initial_state
    from lsemvae.site import federation_config

    def dist(a: dict, b: dict) -> float:
        return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))

    w32, w16 = federated(w32), federated(w16)
    w0 = {k: v.astype(np.float64) for k, v in federated(initial_state(federation_config(state.run_config)).model).items()}
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
                s[f"{profile} {key} down MB"] = round(b["down"] / 1e6, 3)
    for pair in results.get("runs", []):
        for task, d in pair["auroc_difference"].items():
            s[f"float16 - float32 AUROC {task} ({pair['label']})"] = round(d, 4)
    return s


def main(argv: list[str] | None = None) -> int:
    from lsemvae.data.synthetic import default_cohort, spec_with_overrides

    p = argparse.ArgumentParser(prog="python -m benchmarks.communication", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=400, help="synthetic records per site (default 400)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="run seeds (heads, batch order); one pair each")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-communication")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the simulation's cached quick pretraining")
    p.add_argument("--bytes-only", action="store_true", help="computed bytes and rounding only, no federated runs")
    args = p.parse_args(argv)
    started = time.monotonic()
    args.out = args.out.resolve()
    H.quiet_sites()
    old = H.read_results("communication.json") if args.bytes_only else {}
    if args.checkpoint is None and old.get("checkpoint"):   # the checkpoint the kept runs fine-tuned
        args.checkpoint = REPO / old["checkpoint"]
    if args.checkpoint is None:
        args.checkpoint = H.synthetic_checkpoint()
    args.checkpoint = args.checkpoint.resolve()
    results = {"what": "bytes per site per round up/down (compact, faithful; float32, float16) and the AUROC cost of "
                       "float16 updates in same-seed synthetic federations",
               "checkpoint": _rel(args.checkpoint), "tasks": list(TASKS), "computed": computed_bytes(),
               "float16_rounding": float16_rounding(args.checkpoint)}
    if args.bytes_only:   # keep the measured runs of an earlier full run, and the command that made them
        results["runs"] = old.get("runs", [])
        results["runs_command"] = old.get("runs_command") or old.get("command")
        head = H.meta("communication", argv, started,
                      command=H.joined_commands([results["runs_command"], H.command_line("communication", argv)]))
    else:
        spec = spec_with_overrides(default_cohort(), sites=3, records=args.records, seed=0)
        sites = H.load_sites(H.synthetic_sites(spec, args.out / "cohort"))
        results["runs"] = []
        for seed in args.seeds:
            label = f"seed {seed}, no DP"
            runs, states = {}, {}
            for dtype in DTYPES:
                print(f"{label}: update-dtype {dtype}", flush=True)
                runs[dtype], states[dtype] = federated_run(sites, args, dtype, seed)
            w = {d: runs[d].pop("_final") for d in DTYPES}
            diff = {t: runs["float16"]["auroc"][t] - runs["float32"]["auroc"][t] for t in runs["float32"]["auroc"]}
            gaps = weight_gaps(w["float32"], w["float16"], states["float32"])
            results["runs"].append({"label": label, "seed": seed, "sites": 3, "records_per_site": args.records,
                                    "rounds": args.rounds, "runs": runs, "auroc_difference": diff, **gaps})
            print(f"{label}: AUROC float16 - float32 {diff}, weights {gaps}", flush=True)
        results["runs_command"] = H.command_line("communication", argv)
        head = H.meta("communication", argv, started)
    results["summary"] = summary(results)
    H.write_results(H.RESULTS / "communication.json", head, results)
    for k, v in results["summary"].items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
