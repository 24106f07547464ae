"""User errors through the real command lines (subprocesses): one clear message, non-zero exit, no traceback.

A hospital operator meets the launcher and the data commands first; a typo in a site file or an
option must say which file/option and field is wrong, never dump a Python traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = [sys.executable, str(REPO / "client" / "run.py")]
LSEMVAE = [sys.executable, "-m", "lsemvae"]

SITE = """
name = "x"
leads = "6L"
state_dir = "state"
anchor_dir = "anchors"
[data]
format = "manifest"
root = "records"
labels = "labels.csv"
[[tasks]]
name = "right_heart"
column = "ph"
[privacy]
epsilon = 3.0
[connection]
superlink = "127.0.0.1:8000"
"""


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_user_error(out: subprocess.CompletedProcess, *expected: str, code: int | None = None) -> None:
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert code is None or out.returncode == code, (out.returncode, text)
    assert "Traceback" not in text, text
    for part in expected:
        assert part in text, (part, text)


def site_file(tmp: Path, text: str = SITE) -> Path:
    path = tmp / "x.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("change, field", [
    (("epsilon = 3.0", 'epsilon = "lots"'), "privacy.epsilon"),
    (("epsilon = 3.0", "epsilon = 1000"), "privacy.epsilon"),
    (('leads = "6L"', 'leads = ["I", "Q7"]'), "leads"),
    (('root = "records"\n', ""), "data.root"),
    (("[privacy]", "[privacy]\nbudgett = 2"), "privacy.budgett"),
    (('superlink = "127.0.0.1:8000"', "superlink = 8000"), "connection.superlink"),
])
def test_launcher_broken_site_file(tmp_path, change, field):
    path = site_file(tmp_path, SITE.replace(*change))
    out = run(LAUNCHER + ["--site", "x", "--config", str(path), "--check"], tmp_path)
    assert_user_error(out, f"{path}: {field}", code=2)


def test_launcher_missing_or_unreadable_site_file(tmp_path):
    out = run(LAUNCHER + ["--site", "x", "--sites-dir", str(tmp_path / "nowhere"), "--check"], tmp_path)
    assert_user_error(out, f"{tmp_path / 'nowhere' / 'x.toml'}: config file not found", code=2)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"name = \xff\xfe\n")
    out = run(LAUNCHER + ["--site", "x", "--config", str(bad), "--check"], tmp_path)
    assert_user_error(out, f"{bad}: not UTF-8", code=2)
    out = run(LAUNCHER + ["--site", "Not A Site", "--check"], tmp_path)
    assert_user_error(out, "site name 'Not A Site'", code=2)


@pytest.mark.parametrize("option, field", [
    (["--superlink", "no-port-here"], "connection.superlink"),
    (["--port", "80"], "connection.node_port"),
])
def test_launcher_bad_override_names_the_field(tmp_path, option, field):
    path = site_file(tmp_path)
    out = run(LAUNCHER + ["--site", "x", "--config", str(path), "--check", *option], tmp_path)
    assert_user_error(out, field, code=2)


def test_launcher_bad_option_type_is_an_argparse_error(tmp_path):
    out = run(LAUNCHER + ["--site", "x", "--config", str(site_file(tmp_path)), "--port", "abc"], tmp_path)
    assert_user_error(out, "argument --port: invalid int value", code=2)


def test_launcher_preflight_names_missing_files(tmp_path):
    path = site_file(tmp_path)
    base = LAUNCHER + ["--site", "x", "--config", str(path), "--check", "--skip-network-check"]
    out = run(base + ["--insecure"], tmp_path)
    assert_user_error(out, f"{tmp_path / 'records'} does not exist", "Fix:", code=1)
    (tmp_path / "records").mkdir()
    out = run(base + ["--insecure"], tmp_path)
    assert_user_error(out, f"{tmp_path / 'labels.csv'} not found", code=1)
    # TLS by default: a CA file that is not there is named, with the fix
    out = run(base + ["--root-certificates", str(tmp_path / "ca.crt")], tmp_path)
    assert_user_error(out, f"{tmp_path / 'ca.crt'} not found", "connection.root_certificates", code=1)


@pytest.mark.e2e
@pytest.mark.parametrize("args, expected", [
    (["data", "prepare", "--root", "/nonexistent/ecg"], "/nonexistent/ecg: not found"),
    (["data", "prepare", "--root", "{ludb}", "--fs", "5", "--limit", "2"], "fs: Input should be greater than or equal to 50"),
    (["data", "prepare", "--root", "{ludb}", "--seconds", "-1", "--limit", "2"], "argument --seconds: must be a number > 0"),
    (["data", "prepare", "--root", "{ludb}", "--tasks", "nosuchtask", "--limit", "2"], "unknown task 'nosuchtask'"),
    (["data", "prepare", "--root", "{ludb}", "--rate", "250"], "argument --rate: invalid choice"),
    (["data", "inspect", "{ludb}", "--fs", "5", "--limit", "2"], "fs: Input should be greater than or equal to 50"),
    (["data", "synth", "--dest", "{tmp}/syn", "--records", "-5"], "sites.0.n_records"),
    (["data", "synth", "--dest", "{tmp}/syn", "--config", "{tmp}/cohort.toml"], "cohort.toml: sites.0.fs"),
])
def test_data_commands_user_errors(tmp_path, ludb_root, args, expected):
    (tmp_path / "cohort.toml").write_text('[[sites]]\nname = "a"\nn_records = 5\nfs = 7\n')
    args = [a.format(ludb=ludb_root, tmp=tmp_path) for a in args]
    cache = ["--cache-dir", str(tmp_path / "cache")] if args[1] == "prepare" else []
    out = run(LSEMVAE + args + cache + ["--no-progress"], tmp_path)
    assert_user_error(out, expected.format(tmp=tmp_path), code=2)


def test_data_commands_exit_1_when_nothing_was_read_or_converted(tmp_path):
    """As typed: an unreadable file, a folder of non-ECG files: a report, exit 1 (not 0), no traceback."""
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "broken.scp").write_bytes(b"\0" * 16 + b"SCPECG" + b"\0" * 10)
    out = run(LSEMVAE + ["data", "inspect", str(tmp_path / "broken.scp"), "--no-progress"], tmp_path)
    assert_user_error(out, "read failures by reason: corrupt: 1", code=1)
    out = run(LSEMVAE + ["data", "inspect", str(tmp_path / "scans"), "--no-progress"], tmp_path)
    assert_user_error(out, "unknown-format", "no ECG records found", code=1)
    out = run(LSEMVAE + ["data", "convert", str(tmp_path / "scans"), str(tmp_path / "out"), "--no-progress"], tmp_path)
    assert_user_error(out, "converted 0 record(s)", "a.pdf", code=1)


# Every numeric option of the lsemvae sub-commands that is a count, a rate or a share, with values it must refuse.
BAD_NUMBERS = [
    (["data", "prepare", "--root", "r"], "--limit", ["-3", "0", "2.5", "many"], "must be a whole number >= 1"),
    (["data", "prepare", "--root", "r"], "--workers", ["0", "-1"], "must be a whole number >= 1"),
    (["data", "prepare", "--root", "r"], "--seconds", ["0", "-1", "nan", "inf"], "must be a number > 0"),
    (["data", "inspect", "p"], "--limit", ["-3", "0"], "must be a whole number >= 1"),
    (["data", "download", "ludb", "--dest", "d"], "--limit", ["-1", "0"], "must be a whole number >= 1"),
    (["pretrain"], "--epochs", ["0", "-2"], "must be a whole number >= 1"),
    (["pretrain"], "--batch-size", ["0", "-8"], "must be a whole number >= 1"),
    (["pretrain"], "--lr", ["0", "-1e-3", "nan"], "must be a number > 0"),
    (["pretrain"], "--val-fraction", ["0", "1", "-0.1", "1.5"], "must be a number in (0, 1)"),
    (["finetune"], "--epochs", ["0"], "must be a whole number >= 1"),
    (["finetune"], "--lr", ["0", "-1"], "must be a number > 0"),
    (["finetune"], "--label-fraction", ["0", "1.01", "-0.5"], "must be a number in (0, 1]"),
    (["evaluate", "--checkpoint", "m.pt"], "--n-boot", ["0", "-100"], "must be a whole number >= 1"),
    (["evaluate", "--checkpoint", "m.pt"], "--ig-steps", ["0"], "must be a whole number >= 1"),
    (["evaluate", "--checkpoint", "m.pt"], "--ig-per-class", ["-1"], "must be a whole number >= 1"),
    (["evaluate", "--checkpoint", "m.pt"], "--threads", ["0", "-4"], "must be a whole number >= 1"),
    (["evaluate", "--checkpoint", "m.pt"], "--target-sensitivity", ["0", "1", "2"], "must be a number in (0, 1)"),
    (["compare", "a.csv", "b.csv"], "--n-boot", ["0"], "must be a whole number >= 1"),
    (["predict", "x", "--checkpoint", "m.pt", "--out", "s.csv"], "--workers", ["0", "-1"], "must be a whole number >= 1"),
    (["predict", "x", "--checkpoint", "m.pt", "--out", "s.csv"], "--batch-size", ["0", "many"],
     "must be a whole number >= 1"),
    (["predict", "x", "--checkpoint", "m.pt", "--out", "s.csv"], "--threads", ["-2"], "must be a whole number >= 1"),
    (["privacy", "set-budget", "--ledger", "l", "--site", "s", "--confirm", "why"], "--max-epsilon", ["0", "-3", "nan"],
     "must be a number > 0"),
    (["privacy", "reset", "--ledger", "l", "--site", "s", "--confirm", "why"], "--delta", ["0", "1", "-1e-5"],
     "must be a number in (0, 1)"),
]


@pytest.mark.parametrize("command, flag, values, message", BAD_NUMBERS, ids=lambda v: v if isinstance(v, str) else None)
def test_negative_zero_or_non_numeric_counts_are_refused_naming_the_flag(capsys, command, flag, values, message):
    from lsemvae.cli import build_parser

    parser = build_parser()
    for value in values:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*command, f"{flag}={value}"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: {message} (got '{value}')" in err, err


def test_valid_counts_still_parse():
    from lsemvae.cli import build_parser

    args = build_parser().parse_args(["data", "prepare", "--root", "r", "--limit", "3", "--workers", "2", "--seconds", "2.5"])
    assert (args.limit, args.workers, args.seconds) == (3, 2, 2.5)
    args = build_parser().parse_args(["finetune", "--label-fraction", "1", "--lr", "1e-4", "--epochs", "1"])
    assert (args.label_fraction, args.lr, args.epochs) == (1.0, 1e-4, 1)


@pytest.mark.e2e
def test_data_prepare_negative_limit_through_the_real_command(tmp_path):
    """The command line as a user types it: refused before any record is read, one line naming --limit."""
    out = run(LSEMVAE + ["data", "prepare", "--root", str(tmp_path), "--limit", "-3", "--cache-dir", str(tmp_path / "c")],
              tmp_path)
    assert_user_error(out, "argument --limit: must be a whole number >= 1 (got '-3')", code=2)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("args, expected", [
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--sites", "0"], "--sites must be at least 1"),
    (["--checkpoint", "/nonexistent/best.pt"], "--checkpoint /nonexistent/best.pt: file not found"),
    (["--strategy", "fedsgd"], "argument --strategy: invalid choice"),
])
def test_simulation_bad_arguments_fail_before_starting_anything(tmp_path, args, expected):
    out = run([sys.executable, str(REPO / "simulation" / "run.py"), "--out", str(tmp_path / "sim"), *args], tmp_path)
    assert_user_error(out, expected, code=2)
    assert not (tmp_path / "sim" / "superlink.log").exists()
