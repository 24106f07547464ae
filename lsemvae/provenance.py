"""What produced an artefact: the code commit and the numerical environment, recorded with results
and checkpoints so that a number or a set of weights can be traced and reproduced."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_commit() -> str | None:
    """The git commit of this checkout (None outside a git checkout, e.g. an installed wheel)."""
    return _git("rev-parse", "HEAD") or None


def code_state() -> dict:
    """Commit and whether the checkout had uncommitted changes to tracked files (then the commit alone does not
    reproduce it)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": code_commit(), "uncommitted_changes": None if status is None else bool(status)}


def environment() -> dict:
    """Versions and thread count: CPU floating-point results depend on them."""
    import numpy
    import torch

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "system": platform.system()}


def command_line() -> str:
    """This process's command line, as a user would type it (``lsemvae ...`` for the console script)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("lsemvae", "__main__.py"):
        argv[0] = "lsemvae"
    return shlex.join(argv)
