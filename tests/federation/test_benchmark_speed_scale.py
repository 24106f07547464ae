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
    with speed.LoaderTimer() as timer:
        for _ in DataLoader(SlowItems(), batch_size=2):
            time.sleep(0.02)  # training work: not counted
    assert timer.batches == 4  # 3 batches + the StopIteration call
    assert 0.06 <= timer.seconds < 0.06 + 0.05
    assert torch.utils.data.dataloader._BaseDataLoaderIter.__next__ is original


def test_makespan_is_the_longest_first_schedule_on_parallel_workers():
    assert scale.makespan([1, 4, 2, 3], 2) == 5
    assert scale.makespan([3, 3, 2, 2, 2], 2) == 7  # greedy, as a dispatcher without foresight (optimum 6)
    assert scale.makespan([3, 3, 2, 2, 2], 1) == 12
    assert scale.makespan([5, 1, 1], 2) == 5
    assert scale.makespan([], 2) == 0.0


def _row(round_: int, end: float) -> dict:
    return {"round": round_, "time": end, "seconds": 10.0,
            "stage_seconds": {"wait_nodes": 0.5, "train": 6.0, "aggregate": 0.5, "evaluate": 2.5, "metrics": 0.1},
            "train": {"a": {"site_seconds": 4.0, "train_seconds": 3.0}, "b": {"site_seconds": 2.0, "train_seconds": 1.5},
                      "c": {"site_seconds": 1.0, "train_seconds": 0.5}},
            "eval": {"a": {"site_seconds": 1.0}, "b": {"site_seconds": 1.0}, "c": {"site_seconds": 0.5}}}


def test_round_overhead_subtracts_the_parallel_client_compute_of_both_stages():
    r = scale.round_overhead(_row(2, 100.0), workers=2)
    # train makespan on 2 workers: max(4, 2 + 1) = 4; evaluate: max(1 + 0.5, 1) = 1.5
    assert r["client_compute_parallel_s"] == 5.5
    assert r["client_compute_sum_s"] == 9.5
    assert r["overhead_s"] == 4.5 and r["overhead_share"] == 0.45
    assert r["train_stage_overhead_s"] == 2.0 and r["evaluate_stage_overhead_s"] == 1.0
    summary = scale.summarise_rounds([scale.round_overhead(_row(1, 50.0), 2), r])
    assert summary["rounds_summarised"] == [2] and summary["overhead_share"] == 0.45


def test_a_site_without_site_seconds_is_refused():
    row = _row(1, 10.0)
    row["train"]["a"]["site_seconds"] = None
    with pytest.raises(RuntimeError, match="site-seconds"):
        scale.round_overhead(row, workers=2)


def test_message_latencies_from_the_outgoing_logs(tmp_path):
    row = _row(3, 1000.0)  # round starts at 990; train sent at 990.5, ends 996.5; evaluate sent 997.0, ends 999.5
    (tmp_path / "a").mkdir()
    lines = [{"message_type": "train", "group_id": "3", "time": 995.0, "metrics": {"metrics": {"site-seconds": 4.0}}},
             {"message_type": "evaluate", "group_id": "3", "time": 999.0, "metrics": {"metrics": {"site-seconds": 1.0}}},
             {"message_type": "train", "group_id": "2", "time": 5.0, "error": {"code": 4000, "reason": "x"}}]
    log = tmp_path / "a" / "outgoing-messages.jsonl"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = {e["site"]: e for e in scale.message_latencies([row], [log])}
    assert out["a"] == {"round": 3, "site": "a", "train_pre_s": 0.5, "train_post_s": 1.5,
                        "evaluate_pre_s": 1.0, "evaluate_post_s": 0.5}
    assert set(out["b"]) == {"round", "site"}  # no log for site b: no latency, no crash
