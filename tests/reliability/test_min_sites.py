"""Fewer sites than min-sites: the run stops with a clear message, no hang, the model unchanged.

Loopback deployment: two sites started through client/run.py; the run asks for non-DP training,
which one site's config forbids, so only one site trains while min-sites is 2. Round 1 is logged
with the refusal and the reason, the run stops (status "stopped: ..."), the final model is the
initial one, and the ServerApp ends well within the bound.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from lsemvae.federation import keys as K
from tests.federation.helpers import read_jsonl, write_checkpoint, write_sites
from tests.reliability.procs import Deployment, wait_for, wait_server_done

pytestmark = pytest.mark.e2e


def test_too_few_sites_stop_the_run_with_a_clear_message(tmp_path):
    names = write_sites(tmp_path, n_sites=2, records=16, epsilon=8.0)
    strict = tmp_path / "sites" / f"{names[1]}.toml"
    strict.write_text(strict.read_text().replace("allow_non_dp = true", "allow_non_dp = false"))
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "server-out"
    started = time.monotonic()
    with Deployment(tmp_path) as dep:
        link = dep.superlink()
        for name in names:
            dep.join(name)
        wait_for(lambda: all(dep.site_online(n) for n in names), "sites online", 180, [link, *dep.sites.values()])
        dep.run({"num-server-rounds": 3, "min-sites": 2, "round-timeout": 120.0, "batch-size": 8,
                 "checkpoint": str(ckpt), "out-dir": str(out), "dp": False})
        wait_server_done(dep, out, 400)
    seconds = time.monotonic() - started

    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["round"] == 1                      # stopped in round 1, no round 2
    row = rows[0]
    assert row["sites_trained"] == 1 and "min-sites is 2" in row["stopped"]
    refusal = [f for f in row["failures"] if f["code"] == K.ERR_NON_DP_REFUSED]
    assert len(refusal) == 1 and refusal[0]["reason"] == K.CATEGORIES[K.ERR_NON_DP_REFUSED]
    assert "allow_non_dp = false" in (tmp_path / "state" / names[1] / "site.log").read_text()   # the detail stays there
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["status"].startswith("stopped: ") and "min-sites is 2" in report["status"]
    assert "stopping the run" in (out / "server.log").read_text()
    # the model was left as it was: every parameter, the job's fresh heads included, equals the job's starting model
    from lsemvae.federation.server_round import initial_state
    from lsemvae.site import federation_config

    recorded = json.loads((out / "run-config.json").read_text())
    recorded.pop("checkpoint_source")                                   # provenance, not a run-config key
    start = initial_state(federation_config(recorded))
    final = torch.load(out / "final-model.pt", weights_only=False)["model_state"]
    assert set(final) == set(start.model) and any(k.startswith("heads.") for k in final)
    assert all(np.array_equal(final[k].numpy(), start.model[k]) for k in final)
    print(f"min-sites stop: {seconds:.0f} s wall")
