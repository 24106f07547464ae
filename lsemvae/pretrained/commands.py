"""``lsemvae pretrained list|show|verify|export|reproduce``: see, check, write and rebuild pretrained checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lsemvae.errors import ConfigError


def _folder(spec) -> Path:
    from lsemvae.pretrained import locate
    folder = locate(spec)
    if folder is None:
        raise ConfigError(f"{spec}: a .pt checkpoint, not a pretrained-checkpoint folder: `lsemvae pretrained export "
                          f"{spec} --name NAME` writes one (weights, provenance, card)")
    return folder


def run_list(args) -> int:
    from lsemvae.pretrained import locate, pretrained_on, read_meta, shipped, shipped_dirs
    rows = []
    for name in shipped():
        meta = read_meta(locate(name))
        rows.append({"name": name, "profile": meta["model_config"].get("profile"), "parameters": meta["weights"]["parameters"],
                     "bytes": meta["weights"]["bytes"], "sha256": meta["weights"]["sha256"],
                     "pretrained_on": pretrained_on(meta["provenance"])})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no pretrained checkpoint is shipped with this installation")
    for r in rows:
        print(f"{r['name']}  ({r['profile']}, {r['parameters']:,} parameters, {r['bytes'] / 1e6:.1f} MB, sha256 "
              f"{r['sha256'][:16]}…)\n    pretrained on {r['pretrained_on']}")
    print(f"\n(shipped in {', '.join(map(str, shipped_dirs()))}; `lsemvae pretrained show NAME` for the card, "
          "`--checkpoint NAME` to use one)")
    return 0


def run_show(args) -> int:
    from lsemvae.pretrained import CARD, read_meta
    folder = _folder(args.checkpoint)
    if args.json:
        print(json.dumps(read_meta(folder), indent=2))
    else:
        print((folder / CARD).read_text(encoding="utf-8"))
    return 0


def run_verify(args) -> int:
    """Recompute the sha256 and load the weights into the model they claim to be (strictly)."""
    from lsemvae.pretrained import sha256_bytes
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)  # a pretrained folder is refused here on a sha256 mismatch
    model_from_checkpoint(ckpt)
    src = ckpt["source"]
    digest = src["sha256"] if "name" in src else sha256_bytes(Path(src["path"]).read_bytes())
    if args.sha256 and args.sha256.lower() != digest:
        raise ConfigError(f"{args.checkpoint}: sha256 {digest} is not the expected {args.sha256.lower()}: this is not "
                          "the checkpoint you were told to expect")
    what = f"{src['name']} ({src['path']})" if "name" in src else src["path"]
    print(f"OK: {what}\n    sha256 {digest}" + (" = the expected one" if args.sha256 else
                                                   (" (matches checkpoint.json)" if "name" in src else ""))
          + f"\n    loads into its model config; pretrained on {src['pretrained_on']}")
    return 0


def run_export(args) -> int:
    from lsemvae.pretrained import CARD
    from lsemvae.pretrained.export import export
    from lsemvae.train.checkpoint import load_checkpoint

    out = export(load_checkpoint(args.checkpoint), args.out or Path("runs") / "pretrained" / args.name,
                 name=args.name, notes=args.note)
    print(f"wrote {out}: weights, checkpoint.json and {CARD}; load it with --checkpoint {out}")
    return 0


def run_reproduce(args) -> int:
    import torch
    from safetensors.torch import load_file

    from lsemvae.cli import main as lsemvae_main
    from lsemvae.pretrained import WEIGHTS, read_meta
    from lsemvae.pretrained.export import compare_weights, export, pretrain_argv
    from lsemvae.train.checkpoint import load_checkpoint

    folder = _folder(args.checkpoint)
    meta = read_meta(folder)
    out = args.out or Path("runs") / "pretrained" / f"reproduce-{meta['name']}"
    argv = pretrain_argv(meta, {"--ptbxl": [args.ptbxl] if args.ptbxl else [], "--ludb": [args.ludb] if args.ludb else [],
                                "--folder": args.folder or []}, out / "pretrain")
    print("reproducing " + meta["name"] + ": lsemvae " + " ".join(argv), flush=True)
    if lsemvae_main(argv) != 0:
        return 2
    ckpt = load_checkpoint(out / "pretrain" / "best.pt")
    keys = ckpt["provenance"].get("data_cache_keys"), meta["provenance"].get("data_cache_keys")
    if keys[0] != keys[1]:
        print(f"note: the data differ from what {meta['name']} saw (preprocessed cohort keys {keys[0]} here, "
              f"{keys[1]} recorded): the weights cannot be expected to match", flush=True)
    rebuilt = read_meta(export(ckpt, out / meta["name"], name=meta["name"]))
    if rebuilt["weights"]["sha256"] == meta["weights"]["sha256"]:
        print(f"reproduced bit for bit: sha256 {meta['weights']['sha256']} ({out / meta['name']})")
        return 0
    diff = compare_weights(load_file(folder / WEIGHTS), load_file(out / meta["name"] / WEIGHTS))
    here = {k: v for k, v in rebuilt["provenance"].get("environment", {}).items()}
    print(f"NOT bit for bit: sha256 {rebuilt['weights']['sha256']} here, {meta['weights']['sha256']} recorded; "
          f"largest weight difference {diff.get('max_abs_diff', 'n/a')} (in {diff.get('at')}, largest weight "
          f"{diff.get('max_abs_weight')}). Environment here {here}, recorded "
          f"{meta['provenance'].get('environment')}; torch {torch.__version__}")
    return 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrained", help="pretrained checkpoints: list the shipped ones, show a card, verify, export, reproduce",
        description="A pretrained checkpoint is a folder: weights.safetensors (no executable content), checkpoint.json "
        "(model config, the data it saw, preprocessing, settings, seed, commit, command, the weights' sha256) and "
        "MODEL_CARD.md. Shipped ones load by name wherever a checkpoint is asked for (--checkpoint compact-ptbxl-ludb, "
        "the federation's `checkpoint`); the sha256 is checked on every load.")
    sub = p.add_subparsers(dest="pretrained_command", required=True, metavar="ACTION")

    s = sub.add_parser("list", help="the checkpoints shipped with this installation")
    s.add_argument("--json", action="store_true", help="machine-readable")
    s.set_defaults(func=run_list)

    s = sub.add_parser("show", help="print a checkpoint's model card (or its checkpoint.json)")
    s.add_argument("checkpoint", help="a shipped name or a checkpoint folder")
    s.add_argument("--json", action="store_true", help="print checkpoint.json instead of the card")
    s.set_defaults(func=run_show)

    s = sub.add_parser("verify", help="recompute the weights' sha256 and load them (exit 0 only when they check out)",
                       description="A pretrained folder: its sha256 must match checkpoint.json and the weights must "
                       "load into the recorded model config. Any checkpoint (also a .pt): --sha256 compares it with "
                       "the value you were given (e.g. by a federation's coordinator).")
    s.add_argument("checkpoint", help="a shipped name, a checkpoint folder or a .pt file")
    s.add_argument("--sha256", default=None, help="the sha256 you expect (of weights.safetensors, or of the .pt file)")
    s.set_defaults(func=run_verify)

    s = sub.add_parser("export", help="write a pretraining checkpoint (best.pt) as a checkpoint folder with its card",
                       description="Converts `lsemvae pretrain`'s OUT/best.pt into weights.safetensors + checkpoint.json + "
                       "MODEL_CARD.md (provenance carried over). Use it for a checkpoint pretrained on your own or a "
                       "larger corpus; the folder then loads with --checkpoint FOLDER.")
    s.add_argument("checkpoint", type=Path, help="the .pt written by `lsemvae pretrain` (OUT/best.pt)")
    s.add_argument("--name", required=True, help="short name, e.g. compact-mimic-iv-ecg")
    s.add_argument("--out", type=Path, default=None, help="folder to write (default runs/pretrained/NAME)")
    s.add_argument("--note", action="append", default=None, help="a limitation or remark for the card (repeatable)")
    s.set_defaults(func=run_export)

    s = sub.add_parser("reproduce", help="rerun the pretraining a checkpoint records and compare the weights",
                       description="Reruns `lsemvae pretrain` with the recorded settings, seed and thread count on the "
                       "data you point to, exports the result and compares its sha256 with the checkpoint's (exit 0: "
                       "bit for bit; 1: it differs, and by how much).")
    s.add_argument("checkpoint", help="a shipped name or a checkpoint folder")
    s.add_argument("--ptbxl", type=Path, help="PTB-XL root, if the checkpoint saw PTB-XL")
    s.add_argument("--ludb", type=Path, help="LUDB root, if the checkpoint saw LUDB")
    s.add_argument("--folder", type=Path, action="append", help="record folder(s), if it saw --folder cohorts")
    s.add_argument("--out", type=Path, default=None, help="work folder (default runs/pretrained/reproduce-NAME)")
    s.set_defaults(func=run_reproduce)
