"""The README's quick start builds each cache once: `data prepare` builds the PTB-XL cache, and
`pretrain`, `finetune` and `evaluate` open that very cache (pretraining leaves fold 10 out by choosing rows); LUDB is
built once by `pretrain --ludb`. Before, pretrain and finetune each built their own PTB-XL cache (three in all).

The data are a copy of real PTB-XL (60 records spread over the ten folds) and LUDB (12 records) in their layouts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from lsemvae.cli import main


def mini_ptbxl(src: Path, dest: Path, per_fold: int = 6) -> Path:
    table = pd.read_csv(src / "ptbxl_database.csv")
    table = table[table["ecg_id"] < 1000].groupby("strat_fold").head(per_fold)
    for name in table["filename_lr"]:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copy(src / f"{name}{ext}", dest / f"{name}{ext}")
    table.to_csv(dest / "ptbxl_database.csv", index=False)
    shutil.copy(src / "scp_statements.csv", dest)
    return dest


def mini_ludb(src: Path, dest: Path, n: int = 12) -> Path:
    table = pd.read_csv(src / "ludb.csv", dtype=str, keep_default_na=False).head(n)
    (dest / "data").mkdir(parents=True)
    for rid in table["ID"]:
        for ext in (".hea", ".dat"):
            shutil.copy(src / "data" / f"{rid}{ext}", dest / "data")
    table.to_csv(dest / "ludb.csv", index=False)
    return dest


def test_the_quick_start_builds_each_cache_once(ptbxl_root, ludb_root, tmp_path, capsys):
    ptbxl, ludb = mini_ptbxl(ptbxl_root, tmp_path / "ptb-xl"), mini_ludb(ludb_root, tmp_path / "ludb")
    cache = ["--cache-dir", str(tmp_path / ".cache")]
    runs = tmp_path / "runs"
    assert main(["data", "prepare", "--root", str(ptbxl), *cache, "--no-progress"]) == 0
    (prepared,) = (tmp_path / ".cache").iterdir()
    built = (prepared / "signals.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["pretrain", "--ptbxl", str(ptbxl), "--ludb", str(ludb), *cache, "--epochs", "1",
                 "--out", str(runs / "pretrain")]) == 0
    assert f"data: {prepared}" in capsys.readouterr().out
    assert main(["finetune", "--checkpoint", str(runs / "pretrain" / "best.pt"), "--ptbxl", str(ptbxl), *cache,
                 "--mode", "full", "--leads", "6L", "--epochs", "1", "--out", str(runs / "ft")]) == 0
    assert f"data: {prepared}" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(runs / "ft" / "model.pt"), "--ptbxl", str(ptbxl), *cache,
                 "--split", "test", "--leads", "6L", "--no-interpret", "--n-boot", "20", "--out", str(runs / "eval")]) == 0
    caches = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / ".cache").iterdir())
    assert caches == ["ludb-100hz", "ptb-xl-100hz"]  # one each
    assert (prepared / "signals.npy").stat().st_mtime_ns == built  # opened, never rebuilt
