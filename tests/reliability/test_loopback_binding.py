"""What the coordinator exposes: loopback unless the operator deliberately binds a reachable address.

Flower 1.42 serves the Fleet API (sites), the Control API (``flwr run``: submit code that every
SuperNode executes; no authentication in open-source Flower) and the runtime APIs on ONE port.
Checked with real processes elsewhere, whenever they are up anyway:
  * flower-superlink started without ``--host`` listens on 127.0.0.1 only, and so does every
    SuperNode that client/run.py starts (tests/reliability/test_site_faults.py);
  * every socket of the simulation's SuperLink process tree is on 127.0.0.1
    (tests/reliability/test_coordinator_fault.py).
Here: the launchers never pass a non-loopback ``--host``, and the one documented command that does
(the real coordinator, which hospitals must reach) comes with the instruction to expose only the
Fleet API.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.federation.helpers import REPO

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _commands(text: str, program: str) -> list[list[str]]:
    """Shell commands starting ``program`` in fenced code blocks (backslash continuations joined)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #")[0]) if program in line else []
            if program in words:
                out.append(words[words.index(program):])
    return out


def _host(words: list[str]) -> str | None:
    return words[words.index("--host") + 1] if "--host" in words else None


def test_simulation_launcher_binds_its_superlink_to_loopback():
    from simulation import run as sim

    source = Path(sim.__file__).read_text()
    hosts = re.findall(r'"--host",\s*"([^"]+)"', source)
    assert hosts == ["127.0.0.1"], hosts


def test_site_launcher_leaves_the_supernode_runtime_api_on_loopback(tmp_path):
    from client.run import parse_args, supernode_command
    from lsemvae.site import SiteConfig

    cfg = SiteConfig.model_validate({
        "name": "x", "tasks": [{"name": "right_heart", "column": "ph"}], "state_dir": str(tmp_path / "state"), "anchor_dir": str(tmp_path / "anchors"),
        "data": {"format": "manifest", "root": str(tmp_path), "labels": str(tmp_path / "l.csv")},
        "privacy": {"epsilon": 3.0}, "connection": {"superlink": "fl.example.org:8000"}})
    assert parse_args(["--site", "x"]).insecure is False
    cmd = supernode_command(cfg, tmp_path / "x.toml", insecure=False, max_retries=None)
    assert "--host" not in cmd          # flower-supernode's runtime API default: 127.0.0.1 (checked live elsewhere)


def test_documented_non_loopback_superlink_comes_with_the_fleet_only_instruction():
    readme = (REPO / "README.md").read_text()
    commands = _commands(readme, "flower-superlink")
    assert commands, "README documents no flower-superlink command"
    exposed = [c for c in commands if _host(c) not in LOOPBACK and _host(c) is not None]
    if exposed:
        assert "/v1/fleet/*" in readme and "no authentication" in readme.lower(), \
            "README binds the SuperLink beyond loopback without saying to expose only the Fleet API"
