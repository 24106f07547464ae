"""``lsemvae``: the command line for central work (data, pretraining, fine-tuning, evaluation).

Each area owns its sub-commands in a module with ``register(subparsers)``; this file only
assembles them and turns user errors (:class:`LSEMVAEError`) into one clear line, no traceback.
What the commands write (caches, converted records with patient ids in their headers, scores,
reports) is private to the user who runs them: the umask is 077 (:data:`PRIVATE_UMASK`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lsemvae import __version__
from lsemvae.errors import LSEMVAEError

PRIVATE_UMASK = 0o077   # new files 0600, new folders 0700: patient-derived outputs are not for other users

# Modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = [
    "lsemvae.data.commands",
    "lsemvae.privacy.commands",
    "lsemvae.train.commands",
    "lsemvae.train.eval_commands",
    "lsemvae.train.predict_command",
    "lsemvae.pretrained.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsemvae",
        description="LS-EMVAE for ECG: prepare data, pretrain on 12-lead ECG, fine-tune and evaluate on any lead set. "
        "Federated training runs through Flower (see README: client/run.py, simulation/run.py).",
    )
    parser.add_argument("--version", action="version", version=f"lsemvae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.umask(PRIVATE_UMASK)
    try:
        return int(args.func(args) or 0)
    except LSEMVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
