"""Mutation testing of the modules the privacy and fault guarantees rest on (`make mutation`).

Each group of modules below is mutated with mutmut in its own scratch copy of the checkout
(``mutation-runs/<group>``, ignored by git), driven only by the fast tests that exercise it, so that a
mutant of the ledger is not tested by an hour of federated rounds. Then the verdicts are read back,
``benchmarks/results/mutation.md`` is written (counts per module, then every mutant that survived: its
change and why it does not matter) and the command fails if a survivor has no reason. Reasons live in
``benchmarks/mutation_equivalent.toml``, keyed by function and mutated line, not by mutmut's numbering, so
they still apply after unrelated edits::

    [[equivalent]]
    function = "lsemvae.federation.aggregation.server_step"
    mutated = "new = {k: np.array(v, copy=None) for k, v in global_arrays.items()}"
    reason = "..."

``function`` is a glob (``lsemvae.privacy.*``); instead of ``mutated``, ``pattern`` is a regular expression
the mutated line must match (for one reason shared by many mutants, e.g. the wording of messages).

A reason must say why no test can tell the mutant apart (the same behaviour), or why the difference is
not a guarantee (an error message's wording). A killable mutant gets a test instead.

    python -m benchmarks.mutation run [GROUP ...]     # mutate and test (hours on 2 cores; incremental)
    python -m benchmarks.mutation report              # the report from the last runs
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutmut.stats import status_by_exit_code   # mutmut's own verdict for each exit code

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "mutation-runs"
REASONS = REPO / "benchmarks" / "mutation_equivalent.toml"
OUT = REPO / "benchmarks" / "results" / "mutation.md"
SURVIVING = ("survived", "no tests", "timeout", "suspicious")

# group -> (modules mutated, the fast tests that drive them)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "privacy": (["lsemvae/privacy/ledger.py", "lsemvae/privacy/dp.py", "lsemvae/privacy/randomness.py",
                 "lsemvae/fileio.py"],
                ["tests/privacy", "tests/test_fileio.py"]),
    "server": (["lsemvae/federation/aggregation.py", "lsemvae/federation/state.py",
                "lsemvae/federation/private_eval.py"],
               ["tests/federation/test_aggregation.py", "tests/reliability/test_aggregation_order.py",
                "tests/federation/test_server_state.py", "tests/federation/test_private_eval.py"]),
    "site": (["lsemvae/federation/site_round.py"],
             ["tests/federation/test_site_round.py", "tests/federation/test_client_messages.py",
              "tests/reliability/test_malformed_messages.py"]),
}


@dataclass(frozen=True)
class Mutant:
    name: str            # mutmut's: module.x_function__mutmut_N
    module: str
    function: str        # module.function, as in the reasons file
    removed: str         # the original line(s), stripped
    added: str           # the mutated line(s), stripped


def _function_sources(path: Path) -> dict[str, str]:
    """Every function mutmut wrote into a mutants file, by its mangled name."""
    text = path.read_text()
    lines = text.splitlines()
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno]) for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _readable(mangled: str) -> str:
    """``x_server_step`` -> ``server_step``; ``xǁServerOptimizerǁ__post_init__`` -> ``ServerOptimizer.__post_init__``."""
    return mangled[2:] if mangled.startswith("x_") else mangled[1:].replace("ǁ", ".", 2).strip(".")


def load_mutants(groups: list[str]) -> tuple[list[tuple[Mutant, str]], dict[str, Counter]]:
    """(mutant, verdict) for every mutant of the groups' last runs, and verdict counts per module."""
    rows, counts = [], {}
    for group in groups:
        mutants = RUNS / group / "mutants"
        for rel in GROUPS[group][0]:
            meta = json.loads((mutants / f"{rel}.meta").read_text())
            sources = _function_sources(mutants / rel)
            module = rel.removesuffix(".py").replace("/", ".")
            counts[module] = Counter()
            for name, code in sorted(meta["exit_code_by_key"].items()):
                counts[module][status_by_exit_code[code]] += 1
                rows.append((_mutant(name, module, sources), status_by_exit_code[code]))
    return rows, counts


def _mutant(name: str, module: str, sources: dict[str, str]) -> Mutant:
    mangled, _ = name.removeprefix(module + ".").rsplit("__mutmut_", 1)
    orig, mutated = sources[f"{mangled}__mutmut_orig"], sources[name.removeprefix(module + ".")]
    # line 1 is the def, renamed in each copy
    diff = [d for d in difflib.ndiff(orig.splitlines()[1:], mutated.splitlines()[1:]) if d[:2] in ("- ", "+ ")]
    return Mutant(name, module, f"{module}.{_readable(mangled)}",
                  " / ".join(d[2:].strip() for d in diff if d[0] == "-"),
                  " / ".join(d[2:].strip() for d in diff if d[0] == "+"))


def load_reasons() -> list[dict]:
    return tomllib.loads(REASONS.read_text())["equivalent"] if REASONS.exists() else []


def reason_for(m: Mutant, reasons: list[dict]) -> str | None:
    """The first reason whose function (a glob) matches and whose ``mutated`` line is the mutant's, or whose
    ``pattern`` (a regular expression) matches the mutated line."""
    for r in reasons:
        if not fnmatch.fnmatchcase(m.function, r["function"]):
            continue
        if ("mutated" in r and r["mutated"].strip() == m.added) or ("pattern" in r and re.search(r["pattern"], m.added)):
            return r["reason"]
    return None


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def run(group: str, children: int) -> None:
    """mutmut over one group, in a scratch copy of the checkout with the group's own settings."""
    modules, tests = GROUPS[group]
    work = RUNS / group
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src, dst = REPO / name, work / name
        if src.is_file() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    settings = {"source_paths": ["lsemvae"], "only_mutate": modules,
                "also_copy": ["client", "server", "simulation", "configs", "benchmarks"],
                "pytest_add_cli_args_test_selection": tests,
                "pytest_add_cli_args": ["-p", "no:warnings", "-q", "-x", "-m", "not e2e"]}
    with open(work / "pyproject.toml", "a") as fh:     # the checkout's, plus this group's [tool.mutmut]
        fh.write("\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    # one thread: mutmut forks its test processes from a warm one, and a forked torch thread pool deadlocks
    env = {**os.environ, "LSEMVAE_SHARED_DATA": str(REPO.parent / "shared" / "data"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    print(f"mutation: group {group}: {', '.join(modules)} (driven by {len(tests)} test files)", flush=True)
    subprocess.run([str(Path(sys.executable).parent / "mutmut"), "run", "--max-children", str(children)],
                   cwd=work, env=env, check=True)


def report(groups: list[str]) -> tuple[str, int]:
    rows, counts = load_mutants(groups)
    reasons = load_reasons()
    survivors = [m for m, v in rows if v in SURVIVING]
    unexplained = [m for m in survivors if reason_for(m, reasons) is None]
    lines = ["# Mutation testing", "",
             "`make mutation` (`python -m benchmarks.mutation run`, then `report`): mutmut over the modules below,",
             "each group driven by the fast tests that exercise it (`GROUPS` in benchmarks/mutation.py). A mutant is",
             "one small change to the code (an operator, a constant, an argument); it is killed when a test fails.",
             "Every survivor is listed with why it is equivalent, from `benchmarks/mutation_equivalent.toml`.", "",
             "| Group | Tests |", "|---|---|",
             *[f"| {g} | {', '.join(f'`{t}`' for t in tests)} |" for g, (_, tests) in GROUPS.items()], "",
             "| Module | Mutants | Killed | Survived (explained) | No test reaches it | Timeout |", "|---|---|---|---|---|---|"]
    for module, c in counts.items():
        lines.append(f"| `{module}` | {sum(c.values())} | {c['killed'] + c['caught by type check']} | "
                     f"{c['survived']} | {c['no tests']} | {c['timeout']} |")
    lines += ["", f"Unexplained survivors: **{len(unexplained)}**.", "", "## Survivors", "",
              "| Function | Original | Mutated | Why it survives |", "|---|---|---|---|"]
    for m in survivors:
        lines.append(f"| `{m.function.split('.', 2)[-1]}` | {_cell(m.removed)} | {_cell(m.added)} | "
                     f"{reason_for(m, reasons) or '**UNEXPLAINED**'} |")
    return "\n".join(lines) + "\n", len(unexplained)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="mutate and test the groups (incremental: unchanged functions keep their verdict)")
    run_p.add_argument("groups", nargs="*", help=f"of {', '.join(GROUPS)} (default: all)")
    run_p.add_argument("--children", type=int, default=2, help="parallel test processes (default %(default)s)")
    rep = sub.add_parser("report", help="write the report from the last runs; exit 1 on an unexplained survivor")
    rep.add_argument("--out", type=Path, default=OUT, help="where the report goes (default: %(default)s)")
    rep.add_argument("--stubs", action="store_true", help="print the unexplained survivors as TOML stubs instead")
    args = parser.parse_args(argv)
    if args.command == "run":
        unknown = set(args.groups) - set(GROUPS)
        if unknown:
            parser.error(f"unknown group(s) {', '.join(sorted(unknown))}: choose from {', '.join(GROUPS)}")
        for group in args.groups or GROUPS:
            run(group, args.children)
        return 0
    groups = [g for g in GROUPS if (RUNS / g / "mutants").is_dir()]
    if args.stubs:
        reasons = load_reasons()
        for m, v in load_mutants(groups)[0]:
            if v in SURVIVING and reason_for(m, reasons) is None:
                print(f'[[equivalent]]\n# {m.name}: {v}\n# - {m.removed}\nfunction = "{m.function}"\n'
                      f"mutated = {json.dumps(m.added)}\nreason = \"\"\n")
        return 0
    text, missing = report(groups)
    args.out.write_text(text)
    print(f"{args.out}: {missing} unexplained survivors")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
