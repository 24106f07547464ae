"""Federated simulation on one machine: ``python simulation/run.py``.

The same ServerApp and ClientApp as a real deployment, run by Flower's simulation engine:
this script starts a private simulation SuperLink (on a free loopback port, state under
``--out``), submits the app with ``flwr run --stream`` (progress is streamed), and stops the
SuperLink when the run ends, whatever happens.

Default (no download): a synthetic multi-site cohort (12-lead and 6-lead sites with different
prevalences and device effects, generated once into .cache/), a quick central pretraining on a
separate synthetic pretraining cohort (cached), DP fine-tuning, and a report under --out.

Examples:
    python simulation/run.py                                  # 4 synthetic sites, 5 rounds, DP
    python simulation/run.py --sites 3 --rounds 5 --epsilon 3 --strategy fedadam
    python simulation/run.py --data real --sites 4            # PTB-XL split by its site column + LUDB, from
                                                              # the shipped pretrained weights (compact-ptbxl-ludb)
    python simulation/run.py --no-dp                          # comparison only: NO privacy guarantee
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lsemvae.errors import LSEMVAEError  # noqa: E402
from lsemvae.fileio import dump_toml  # noqa: E402

REAL_SITES = ["ptbxl-site0", "ptbxl-site1", "ptbxl-site2plus", "ludb"]
SYNTH_TEMPLATES = ["hospital_a", "hospital_b", "clinic_c", "referral_d"]
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python simulation/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["synthetic", "real"], default="synthetic",
                   help="synthetic cohort (default) or the real PTB-XL/LUDB data in ../shared/data")
    p.add_argument("--sites", type=int, default=None, help="number of sites (default: 4)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    p.add_argument("--epsilon", type=float, default=0.0, help="every site's total epsilon (default: the site configs')")
    p.add_argument("--strategy", choices=["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"], default="fedavg")
    p.add_argument("--no-dp", action="store_true", help="train WITHOUT differential privacy (comparison only)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/simulation/<UTC time>)")
    p.add_argument("--records", type=int, default=400, help="synthetic records per site (default 400)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="pretrained LS-EMVAE checkpoint: a shipped name, a checkpoint folder or a .pt (default: "
                        "--data real the shipped compact-ptbxl-ludb, --data synthetic a quick synthetic pretraining)")
    p.add_argument("--pretrain-epochs", type=int, default=8, help="quick pretraining epochs (default 8)")
    p.add_argument("--pretrain-records", type=int, default=400, help="synthetic pretraining records (default 400)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-sites", type=int, default=None, help="minimum sites per round (default: all)")
    p.add_argument("--round-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-min-cell", type=int, default=None,
                   help="synthetic sites: smallest record count an evaluation reply may hold (the sites' "
                        "evaluation.min_cell, default 10; they then evaluate from twice as many records). Lower it "
                        "only for tiny test cohorts")
    p.add_argument("--update-dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of the model arrays sent each way (float16 halves the bytes; default float32)")
    p.add_argument("--train-encoders", choices=["auto", "true", "false"], default="auto",
                   help="auto (default): under DP sites train only the fusion gate and task heads (a federated probe: "
                        "far less noise per signal), without DP everything; true / false force it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last server checkpoint")
    p.add_argument("--cpus-per-site", type=int, default=1, help="Ray CPUs per simulated site (default 1)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data and sites

def synthetic_sites(n_sites: int, records: int, seed: int, sites_dir: Path, *, min_cell: int | None = None) -> list[str]:
    """Generate (or reuse) the synthetic cohort and write one site config per site into ``sites_dir``."""
    from lsemvae.data.synthetic import default_cohort, spec_with_overrides, write_cohort

    spec = spec_with_overrides(default_cohort(), sites=n_sites, records=records, seed=seed)
    dest = REPO / ".cache" / "synthetic" / f"{n_sites}sites-{records}rec-seed{seed}"
    print(f"synthetic cohort: {n_sites} sites x {records} records -> {dest}", flush=True)
    write_cohort(spec, dest, progress=True)
    sites_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, site in enumerate(spec.sites):
        template = REPO / "configs" / "sites" / f"{SYNTH_TEMPLATES[i % len(SYNTH_TEMPLATES)]}.toml"
        data = tomllib.loads(template.read_text())
        name = site.name.lower()
        data.update(name=name, description=f"synthetic site {site.name} ({site.leads}, {site.fs} Hz)", leads=site.leads,
                    state_dir=str(sites_dir.parent / "site-state" / name))
        data["data"].update(root=str(dest / site.name / "records"), labels=str(dest / site.name / "labels.csv"))
        if min_cell is not None:
            data["evaluation"] = {"min_cell": min_cell, "min_records": 2 * min_cell}
        (sites_dir / f"{name}.toml").write_text(dump_toml(data))
        names.append(name)
    return names


def pretrained_checkpoint(args: argparse.Namespace, model_overrides: dict | None = None) -> Path:
    """Quick central pretraining on a separate synthetic 12-lead cohort; cached by its settings.

    ``model_overrides`` change the compact profile (benchmarks compare variants; the key follows them)."""
    from lsemvae.data.cache import CohortDataset, build_cohort, patient_split
    from lsemvae.data.preprocess import PIPELINE_VERSION
    from lsemvae.data.sources import manifest_index
    from lsemvae.data.synthetic import CohortSpec, SiteSpec, write_cohort
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.pretrain import PretrainConfig, pretrain

    model_cfg = get_profile("compact", **(model_overrides or {}))
    pre = model_cfg.preprocess_config()
    # the model config is in the key: a changed profile (architecture, objective) retrains instead of reusing
    profile_hash = hashlib.sha256(model_cfg.model_dump_json().encode()).hexdigest()[:10]
    key = f"rec{args.pretrain_records}-ep{args.pretrain_epochs}-seed{args.seed}-v{PIPELINE_VERSION}-{profile_hash}"
    root = REPO / ".cache" / "simulation-pretrain" / key
    ckpt = root / "model" / "best.pt"
    if ckpt.is_file():
        print(f"pretrained checkpoint (cached): {ckpt}", flush=True)
        return ckpt
    spec = CohortSpec(seed=args.seed + 1000, sites=[SiteSpec(name="pretrain", n_records=args.pretrain_records, fs=500)])
    write_cohort(spec, root / "cohort", progress=True)
    refs = manifest_index(root / "cohort" / "pretrain" / "records", root / "cohort" / "pretrain" / "labels.csv")
    cohort = build_cohort(refs, {}, pre, root / "cache", name="pretrain", progress=True)
    train_idx, val_idx, _ = patient_split(cohort, 0.15, seed=args.seed)
    import torch

    torch.set_num_threads(1)  # on a shared 2-core machine more threads make torch many times slower
    torch.manual_seed(args.seed)
    model = build_model(model_cfg)
    print(f"quick central pretraining: {len(train_idx)} records, {args.pretrain_epochs} epochs", flush=True)
    pretrain(model, CohortDataset(cohort, train_idx), CohortDataset(cohort, val_idx),
             PretrainConfig(epochs=args.pretrain_epochs, batch_size=32, seed=args.seed), root / "model",
             provenance={"preprocess_config": pre.model_dump(mode="json"), "pipeline_version": PIPELINE_VERSION,
                         "data": "synthetic pretraining cohort", "synthetic_data": True})
    return ckpt


def starting_checkpoint(args: argparse.Namespace) -> str:
    """--checkpoint; else the shipped checkpoint pretrained on PTB-XL folds 1-9 + LUDB for real sites, the quick
    synthetic pretraining for synthetic ones. Says which, loudly when real sites get a synthetic-pretrained encoder."""
    from lsemvae.pretrained import DEFAULTS, is_name, is_synthetic
    from lsemvae.train.checkpoint import load_checkpoint

    if args.checkpoint:  # a shipped name travels as a name (the ServerApp finds it in the package); paths absolute
        spec = str(args.checkpoint) if is_name(args.checkpoint) else str(args.checkpoint.resolve())
    else:
        spec = DEFAULTS["compact"] if args.data == "real" else str(pretrained_checkpoint(args))
    ckpt = load_checkpoint(spec)
    source = ckpt["source"]
    print(f"starting checkpoint: {source.get('name', spec)} (sha256 {source['sha256'][:16]}…), pretrained on "
          f"{source['pretrained_on']}", flush=True)
    if args.data == "real" and is_synthetic(ckpt["provenance"]):
        print("!" * 100 + f"\nREAL SITES, SYNTHETIC-PRETRAINED ENCODER: {spec} never saw a real ECG; expect results near "
              f"chance. Drop --checkpoint to start from the shipped {DEFAULTS['compact']}.\n" + "!" * 100, flush=True)
    return spec


# ----------------------------------------------------------------------------- Flower processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LSEMVAEError(f"simulation SuperLink exited with code {proc.returncode}; see its log in the output folder")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise LSEMVAEError(f"simulation SuperLink did not become healthy on port {port} within {timeout:g} s")


def stop(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def run_config_arg(cfg: dict) -> str:
    parts = []
    for k, v in cfg.items():
        if isinstance(v, str):
            if "'" in v or " " in v:
                raise LSEMVAEError(f"run config value {k}={v!r} may not contain spaces or quotes (move the folder)")
            parts.append(f"{k}='{v}'")
        elif isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def _check_args(args: argparse.Namespace) -> None:
    """Refuse impossible values before anything starts (not after a SuperLink was spawned)."""
    for name in ("sites", "rounds", "records", "local_epochs", "batch_size", "min_sites", "cpus_per_site", "eval_min_cell"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LSEMVAEError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if args.checkpoint is not None:
        from lsemvae.pretrained import locate
        try:
            locate(args.checkpoint)  # a missing file or unknown name is refused, listing the shipped names
        except LSEMVAEError as err:
            raise LSEMVAEError(f"--checkpoint {err}") from None


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's `finally`: the SuperLink is stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _check_args(args)
    except LSEMVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.resume and not (args.out and (args.out / "server" / "server-state.pt").is_file()):
        print("error: --resume needs --out pointing at a previous simulation (with server/server-state.pt)", file=sys.stderr)
        return 2
    out = (args.out or REPO / "runs" / "simulation" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    superlink = None
    try:
        if args.data == "synthetic":
            names = synthetic_sites(args.sites or 4, args.records, args.seed, out / "sites", min_cell=args.eval_min_cell)
            sites_dir = out / "sites"
            tasks = "right_heart,left_atrial"
        else:
            n = args.sites or len(REAL_SITES)
            if not 1 <= n <= len(REAL_SITES):
                raise LSEMVAEError(f"--data real has {len(REAL_SITES)} sites ({', '.join(REAL_SITES)}); --sites {n} is out of range")
            names, sites_dir, tasks = REAL_SITES[:n], REPO / "configs" / "sites", "superclass,right_heart"
        checkpoint = starting_checkpoint(args)
        if args.no_dp:
            print("!" * 100 + "\nNON-DP SIMULATION: sites train WITHOUT differential privacy; no privacy guarantee.\n" + "!" * 100,
                  flush=True)
        run_cfg = {
            "num-server-rounds": args.rounds, "tasks": tasks, "strategy": args.strategy,
            "min-sites": args.min_sites or len(names), "round-timeout": args.round_timeout,
            "local-epochs": args.local_epochs, "lr": args.lr, "batch-size": args.batch_size, "dp": not args.no_dp,
            "checkpoint": str(checkpoint), "out-dir": str(out / "server"), "seed": args.seed,
            "sites-dir": str(sites_dir), "sim-sites": ",".join(names), "sim-state-dir": str(out / "site-state"),
            "sim-epsilon": args.epsilon, "resume": args.resume,
            "update-dtype": args.update_dtype,
            "train-encoders": {"true": True, "false": False}.get(args.train_encoders, args.train_encoders),
        }
        (out / "simulation.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "run_config": run_cfg}, indent=2) + "\n")
        flwr_home = out / "flwr-home"
        flwr_home.mkdir(exist_ok=True)
        port = free_port()
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "simulation"\n\n[superlink.simulation]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        ray_tmp = Path(f"/tmp/ray-lsemvae-{os.getpid()}")  # short: Ray's socket paths must stay < 108 bytes
        env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(flwr_home), "RAY_TMPDIR": str(ray_tmp),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        bindir = Path(sys.executable).parent
        env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])  # flower-superexec, flwr-serverapp...
        log_path = out / "superlink.log"
        superlink = subprocess.Popen(
            [str(bindir / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(port), "--database", str(flwr_home / "state.db"),
             "--disable-runtime-dependency-installation"],
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, cwd=out, start_new_session=True)
        wait_healthy(port, superlink)
        print(f"simulation SuperLink on 127.0.0.1:{port} (pid {superlink.pid}); {len(names)} sites: {', '.join(names)}",
              flush=True)
        fed_cfg = f"num-supernodes={len(names)} client-resources-num-cpus={args.cpus_per_site}"
        cmd = [str(bindir / "flwr"), "run", str(REPO), "simulation", "--stream",
               "--run-config", run_config_arg(run_cfg), "--federation-config", fed_cfg]
        shutil.rmtree(out / "server" / "report", ignore_errors=True)  # never read a previous run's report
        rc = subprocess.call(cmd, env=env, cwd=out)
        report = out / "server" / "report" / "report.md"
        if rc != 0 or not report.is_file():
            print(f"error: the federated run failed (flwr run exit code {rc}); see {log_path} and {out / 'server' / 'server.log'}",
                  file=sys.stderr)
            return 1
        status = json.loads((report.parent / "report.json").read_text())["status"]
        print(f"done in {time.monotonic() - started:.0f} s ({status}). Report: {report}", flush=True)
        return 0 if status == "completed" else 1
    except LSEMVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        stop(superlink)
        shutil.rmtree(Path(f"/tmp/ray-lsemvae-{os.getpid()}"), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
