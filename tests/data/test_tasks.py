"""Label rules: PH proxies, superclasses, site columns; counts on the real PTB-XL subset and LUDB."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.data.sources import label_counts, ludb_index, ptbxl_index
from lsemvae.data.tasks import TASKS, column_task, get_task, resolve_tasks
from lsemvae.errors import ConfigError


def _y(task: str, **meta) -> list[float]:
    return get_task(task)(meta).tolist()


def test_proxy_rules_on_scp_codes():
    rvh = {"scp_codes": {"RVH": 0.0, "SR": 0.0}}
    assert _y("right_heart", **rvh) == [1.0]
    assert _y("right_heart", scp_codes={"NORM": 100.0}) == [0.0]
    assert _y("right_heart_axis", scp_codes={"NORM": 100.0}, heart_axis="RAD") == [1.0]
    assert _y("right_heart_axis", scp_codes={"NORM": 100.0}, heart_axis="LAD") == [0.0]
    assert _y("phenotype", **rvh) == [0.0]
    assert _y("phenotype", scp_codes={"RAO/RAE": 50.0, "LVH": 100.0}) == [1.0]
    assert np.isnan(_y("phenotype", scp_codes={"LVH": 100.0})[0])  # not right-sided: not applicable
    assert _y("left_atrial", scp_codes={"LAO/LAE": 100.0}) == [1.0]
    assert _y("left_atrial", scp_codes={"LVH": 100.0}) == [0.0]
    assert _y("left_atrial_lvh", scp_codes={"LVH": 100.0}) == [1.0]


def test_records_without_findings_are_unlabelled_not_negative():
    for name in ("right_heart", "right_heart_axis", "left_atrial", "phenotype"):
        assert np.isnan(_y(name, source="clinic")[0])
    assert np.isnan(get_task("superclass")({"source": "x"})).all()


def test_site_column_overrides_the_rule():
    meta = {"scp_codes": {"RVH": 0.0}, "right_heart": 0.0}
    assert _y("right_heart", **meta) == [0.0]
    assert np.isnan(_y("right_heart", right_heart=""))
    assert _y("phenotype", phenotype="1") == [1.0]


def test_column_task_and_registry():
    t = column_task("ph_cath")
    assert (t.name, t.kind, t.n_outputs, t.column) == ("ph_cath", "binary", 1, "ph_cath")
    assert t({"ph_cath": 1.0}).tolist() == [1.0] and np.isnan(t({})[0])
    with pytest.raises(ConfigError, match="label column 'ph_cath'.*'maybe'"):
        t({"ph_cath": "maybe"})
    assert get_task("column:ph_cath").column == "ph_cath"
    with pytest.raises(ConfigError, match="Known tasks: superclass"):
        get_task("rvh")
    with pytest.raises(ConfigError, match="twice"):
        resolve_tasks(["right_heart", "right_heart"])


def test_every_task_is_documented_as_proxy_where_relevant():
    for name, task in TASKS.items():
        assert task.description and task.name == name
        if name != "superclass":
            assert "not a haemodynamic PH label" in task.description


def test_ptbxl_subset_label_counts_match_the_data_readme(ptbxl_root):
    c = label_counts(ptbxl_index(ptbxl_root), TASKS)
    assert [c["superclass"][k] for k in ("NORM", "MI", "STTC", "CD", "HYP")] == [558, 195, 245, 205, 108]
    assert c["right_heart"]["right_heart"] == 9  # RVH 4 ∪ RAO/RAE 7
    assert c["left_atrial"]["left_atrial"] == 17
    assert c["left_atrial_lvh"]["left_atrial_lvh"] == 97
    assert c["right_heart_axis"]["right_heart_axis"] == 20  # README's 24 also counts SEHYP
    assert c["phenotype"]["labelled"] == 9


def test_ludb_label_counts_match_its_provenance(ludb_root):
    c = label_counts(ludb_index(ludb_root), TASKS)
    assert c["right_heart"]["right_heart"] == 20  # RVH 3 ∪ right atrial 17
    assert c["right_heart_axis"]["right_heart_axis"] == 23
    assert c["left_atrial"]["left_atrial"] == 110
    assert c["left_atrial_lvh"]["left_atrial_lvh"] == 133
    assert c["superclass"]["labelled"] == 0
