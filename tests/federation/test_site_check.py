"""What a head means is agreed before anyone trains: sites that name their label columns their own way
train together; a site whose heads do not fit the job is refused by the first exchange, before it spends
any budget, and the failure names the site and the head."""

from __future__ import annotations

import csv
import tomllib

import pytest

from lsemvae.federation.inprocess import InProcessSites
from lsemvae.federation.server_round import initial_state, run_rounds
from lsemvae.fileio import dump_toml
from lsemvae.privacy.ledger import PrivacyLedger
from lsemvae.site import federation_config, load_site_config
from tests.federation.helpers import write_checkpoint, write_sites

pytestmark = pytest.mark.e2e


def _edit(path, change) -> None:
    doc = tomllib.loads(path.read_text())
    change(doc)
    path.write_text(dump_toml(doc))


def _rename_column(labels, old: str, new: str) -> None:
    with open(labels, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[0] = [new if c == old else c for c in rows[0]]
    with open(labels, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_an_incompatible_site_is_refused_before_it_trains_and_own_column_names_are_fine(tmp_path):
    names = write_sites(tmp_path, n_sites=3, records=24)
    paths = [tmp_path / "sites" / f"{n}.toml" for n in names]
    # site 0 keeps its right-heart labels in a column of its own ("ph"), as configs/sites/aspire.toml does
    _rename_column(load_site_config(paths[0]).data.labels, "right_heart", "ph")
    _edit(paths[0], lambda d: d["tasks"][0].update(column="ph"))
    # site 2 brings a head this job does not have
    _edit(paths[2], lambda d: d["tasks"].append({"name": "phenotype", "column": "left_atrial"}))
    sites = [load_site_config(p) for p in paths]
    fed = federation_config({"checkpoint": str(write_checkpoint(tmp_path / "ckpt.pt")), "num-server-rounds": 1,
                             "batch-size": 8, "min-sites": 2})
    state = initial_state(fed)

    status = run_rounds(InProcessSites(sites), fed, state)

    row = state.metrics[0]
    assert status == "completed" and row["sites_trained"] == 2
    assert sorted(row["train"]) == sorted(names[:2])                        # "ph" or "right_heart": one head
    refused = [f for f in row["failures"] if f["stage"] == "query"]
    assert len(refused) == 1 and refused[0]["node"] == 2
    assert "incompatible site, not trained" in refused[0]["reason"]
    assert "head 'phenotype' is not one of this job's tasks (right_heart, left_atrial)" in refused[0]["reason"]
    assert state.node_sites["2"] == names[2]                               # the report can name the site
    # it spent nothing: no ledger, and so no epsilon, for the refused site
    assert not sites[2].ledger_path.exists()
    for site in sites[:2]:
        assert PrivacyLedger.open(site.ledger_path, site=site.name, anchor_dir=site.anchor_dir).epsilon() > 0
