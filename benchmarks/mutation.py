"""Mutation testing of the modules the privacy and fault guarantees rest on: the report of `make mutation`.

`make mutation` runs mutmut (its settings: ``[tool.mutmut]`` in pyproject.toml: the modules, and the fast tests
that drive them), then this script. It reads mutmut's verdicts from ``mutants/``, writes
``benchmarks/results/mutation.md`` (counts per module, then every mutant that survived: its change and why
it does not matter) and exits 1 if a survivor has no reason. Reasons live in
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
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import json
import re
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutmut.stats import status_by_exit_code   # mutmut's own verdict for each exit code

REPO = Path(__file__).resolve().parent.parent
MUTANTS = REPO / "mutants"
REASONS = REPO / "benchmarks" / "mutation_equivalent.toml"
OUT = REPO / "benchmarks" / "results" / "mutation.md"


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


def load_mutants(module_paths: list[str]) -> tuple[list[tuple[Mutant, str]], dict[str, Counter]]:
    """(mutant, verdict) for every mutant mutmut checked, and verdict counts per module."""
    rows, counts = [], {}
    for rel in module_paths:
        meta = json.loads((MUTANTS / f"{rel}.meta").read_text())
        sources = _function_sources(MUTANTS / rel)
        module = rel.removesuffix(".py").replace("/", ".")
        counts[module] = Counter()
        for name, code in sorted(meta["exit_code_by_key"].items()):
            verdict = status_by_exit_code[code]
            counts[module][verdict] += 1
            local = name.removeprefix(module + ".")
            mangled, _ = local.rsplit("__mutmut_", 1)
            orig, mutated = sources[f"{mangled}__mutmut_orig"], sources[local]   # line 1: the def, renamed
            diff = [d for d in difflib.ndiff(orig.splitlines()[1:], mutated.splitlines()[1:]) if d[:2] in ("- ", "+ ")]
            rows.append((Mutant(name, module, f"{module}.{_readable(mangled)}",
                                " / ".join(d[2:].strip() for d in diff if d[0] == "-"),
                                " / ".join(d[2:].strip() for d in diff if d[0] == "+")), verdict))
    return rows, counts


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


def report(module_paths: list[str]) -> tuple[str, int]:
    rows, counts = load_mutants(module_paths)
    reasons = load_reasons()
    survivors = [m for m, v in rows if v in ("survived", "no tests", "timeout", "suspicious")]
    unexplained = [m for m in survivors if reason_for(m, reasons) is None]
    lines = ["# Mutation testing", "",
             "`make mutation`: mutmut over the modules below, driven by their fast tests (`[tool.mutmut]` in",
             "pyproject.toml). A mutant is one small change to the code (an operator, a constant, a removed call);",
             "it is killed when a test fails. Every survivor is listed with why it is equivalent, from",
             "`benchmarks/mutation_equivalent.toml`.", "",
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
    parser.add_argument("--out", type=Path, default=OUT, help="where the report goes (default: %(default)s)")
    parser.add_argument("--unexplained", action="store_true", help="print the unexplained survivors as TOML stubs")
    args = parser.parse_args(argv)
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    text, missing = report(config["only_mutate"])
    if args.unexplained:
        rows, _ = load_mutants(config["only_mutate"])
        reasons = load_reasons()
        for m, v in rows:
            if v in ("survived", "no tests", "timeout", "suspicious") and reason_for(m, reasons) is None:
                print(f'[[equivalent]]\n# {m.name}: {v}\n# - {m.removed}\nfunction = "{m.function}"\n'
                      f"mutated = {json.dumps(m.added)}\nreason = \"\"\n")
        return 0
    args.out.write_text(text)
    print(f"{args.out}: {missing} unexplained survivors")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
