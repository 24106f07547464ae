"""The measuring parts of benchmarks/speed.py and benchmarks/scale.py: DataLoader wait time, the parallel
client-compute makespan, framework overhead per round and message latencies from the sites' outgoing logs."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks import scale, speed


class SlowItems(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(0.01)
        return torch.zeros(3)


def test_loader_timer_counts_time_inside_the_iterator_and_restores_it():
    original = torch.utils.data.dataloader._BaseDataLoaderIter.__next__
    started = time.perf_counter()
    with speed.LoaderTimer() as timer:
        for _ in DataLoader(SlowItems(), batch_size=2):
            time.sleep(0.02)  # training work: not counted
    total = time.perf_counter() - started
    assert timer.batches == 4  # 3 batches + the StopIteration call
    # at least the items' own 6 x 10 ms, and never the 3 x 20 ms of work between batches (however loaded the machine)
    assert 0.06 <= timer.seconds <= total - 0.06
    assert torch.utils.data.dataloader._BaseDataLoaderIter.__next__ is original


def test_makespan_is_the_longest_first_schedule_on_parallel_workers():
    assert scale.makespan([1, 4, 2, 3], 2) == 5
    assert scale.makespan([3, 3, 2, 2, 2], 2) == 7  # greedy, as a dispatcher without foresight (optimum 6)
    assert scale.makespan([3, 3, 2, 2, 2], 1) == 12
    assert scale.makespan([5, 1, 1], 2) == 5
    assert scale.makespan([], 2) == 0.0


def _row(round_: int, end: float, *, last: bool = False) -> dict:
    """A metrics row as the server writes it: a site's train handler also evaluated the previous model (its
    site-seconds hold both); only the last row has an evaluate stage (one message after the last round)."""
    return {"round": round_, "time": end, "seconds": 7.0,
            "stage_seconds": {"wait_nodes": 0.5, "train": 6.0, "aggregate": 0.5, **({"evaluate": 2.5} if last else {})},
            "train": {"a": {"site_seconds": 4.0, "train_seconds": 3.0}, "b": {"site_seconds": 2.0, "train_seconds": 1.5},
                      "c": {"site_seconds": 1.0, "train_seconds": 0.5}},
            "eval": {"a": {"loss": 0.1}, "b": {"loss": 0.2}, "c": {"loss": 0.3}}}


def test_round_overhead_subtracts_the_parallel_client_compute_and_keeps_the_final_evaluation_apart():
    r = scale.round_overhead(_row(2, 100.0), workers=2)
    # train makespan on 2 workers: max(4, 2 + 1) = 4
    assert r["client_compute_parallel_s"] == 4.0
    assert r["client_compute_sum_s"] == 7.0
    assert r["overhead_s"] == 3.0 and r["overhead_share"] == round(3 / 7, 4)
    assert r["train_stage_overhead_s"] == 2.0 and "final_evaluate_s" not in r
    last = scale.round_overhead(_row(3, 110.0, last=True), workers=2)
    assert last["overhead_s"] == 3.0 and last["final_evaluate_s"] == 2.5   # not in the round's wall time
    summary = scale.summarise_rounds([scale.round_overhead(_row(1, 50.0), 2), r, last])
    assert summary["rounds_summarised"] == [2, 3] and summary["overhead_share"] == round(6 / 14, 4)
    assert summary["server_aggregate_s"] == 0.5 and summary["final_evaluate_s"] == 2.5


def test_a_site_without_site_seconds_is_refused():
    row = _row(1, 10.0)
    row["train"]["a"]["site_seconds"] = None
    with pytest.raises(RuntimeError, match="site-seconds"):
        scale.round_overhead(row, workers=2)


def test_message_latencies_from_the_outgoing_logs(tmp_path):
    # round 2 starts at 993; train sent at 993.5, ends 999.5. Round 3 (the last) starts at 1000; train sent at
    # 1000.5, ends 1006.5; the row is stamped at 1007, the final evaluate sent then and ends at 1009.5
    rows = [_row(2, 1000.0), _row(3, 1007.0, last=True)]
    (tmp_path / "a").mkdir()
    lines = [{"message_type": "train", "group_id": "2", "time": 998.0, "body": {"site_seconds": 4.0}},
             {"message_type": "train", "group_id": "3", "time": 1005.0, "body": {"site_seconds": 4.0}},
             {"message_type": "evaluate", "group_id": "3", "time": 1009.0, "body": {"site_seconds": 1.0}},
             {"message_type": "train", "group_id": "1", "time": 5.0, "error": {"code": 4000, "reason": "x"}}]
    log = tmp_path / "a" / "outgoing-messages.jsonl"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = {(e["site"], e["round"]): e for e in scale.message_latencies(rows, [log])}
    assert out["a", 2] == {"round": 2, "site": "a", "train_pre_s": 0.5, "train_post_s": 1.5}
    assert out["a", 3] == {"round": 3, "site": "a", "train_pre_s": 0.5, "train_post_s": 1.5,
                           "evaluate_pre_s": 1.0, "evaluate_post_s": 0.5}
    assert set(out["b", 3]) == {"round", "site"}  # no log for site b: no latency, no crash
