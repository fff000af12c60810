"""What starting genopt costs: the import and the CLI's first answer, against ``python -c pass``.

    python -m bench.bench_import [--repeat 15] [--old-tree DIR] [--quick]

Each round starts every command below once, as a fresh process, in a shuffled order, so
machine noise hits all of them alike; the figure per command is the median wall time over
the rounds, and its ratio to the median of ``python -c pass`` measured in the same rounds.

- ``python -c pass``: the interpreter alone (the floor).
- ``import prefect_genopt``: the package import (lazy: no Prefect, DuckDB, litellm or OTel).
- ``import prefect_genopt + Tunables``: what a module declaring its tunables pays.
- ``genopt --help`` and ``genopt rollout start --help``: the CLI's help (no heavy import).
- ``genopt sql "select 1"``: a real query on a small warehouse file (DuckDB is imported).

``--old-tree DIR`` adds the same import and CLI commands run from another checkout of the
repository (e.g. ``git worktree add DIR 3263e54``, the code before the light import), with
the same interpreter and packages, so before and after are measured side by side.

Target (issue 13): ``genopt --help`` and ``genopt sql "select 1"`` in at most 1.5 s here.
Results go to ``bench/results/bench_import.json`` (``--quick``: 3 rounds, into the work
directory).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common

TARGET_S = 1.5


def _cli(tree: Path, *argv: str) -> list[str]:
    """The ``genopt`` CLI of the checkout at ``tree``, through this interpreter."""
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); sys.argv = ['genopt']; "
        f"from prefect_genopt.cli import main; raise SystemExit(main({list(argv)!r}))"
    )
    return [sys.executable, "-c", code]


def _commands(warehouse: Path, old_tree: Path | None) -> dict[str, list[str]]:
    genopt = shutil.which("genopt", path=str(Path(sys.executable).parent)) or "genopt"
    wh = ["--warehouse", str(warehouse)]
    old: dict[str, list[str]] = {}
    if old_tree is not None:
        imp = f"import sys; sys.path.insert(0, {str(old_tree)!r}); import prefect_genopt"
        old = {
            "old: import prefect_genopt": [sys.executable, "-c", imp],
            "old: genopt --help": _cli(old_tree, "--help"),
            'old: genopt sql "select 1"': _cli(old_tree, *wh, "sql", "select 1"),
        }
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import prefect_genopt": [sys.executable, "-c", "import prefect_genopt"],
        "import prefect_genopt + Tunables": [
            sys.executable,
            "-c",
            "import prefect_genopt as g; g.Tunables",
        ],
        "genopt --help": [genopt, "--help"],
        "genopt rollout start --help": [genopt, "rollout", "start", "--help"],
        'genopt sql "select 1"': [genopt, *wh, "sql", "select 1"],
        **old,
    }


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=15, help="rounds (default 15)")
    ap.add_argument(
        "--old-tree", type=Path, help="another checkout to measure side by side (see above)"
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run (3 rounds)")
    args = ap.parse_args(argv)
    rounds = 3 if args.quick else args.repeat

    scratch = common.scratch_dir("bench-import")
    warehouse = scratch / "warehouse.duckdb"
    env = {**os.environ, **common.QUIET_ENV, "PREFECT_HOME": str(scratch / "prefect")}
    env.pop("GENOPT_WAREHOUSE", None)
    commands = _commands(warehouse, args.old_tree.resolve() if args.old_tree else None)
    genopt = commands["genopt --help"][0]
    _run([genopt, "--warehouse", str(warehouse), "ingest"], env)  # creates the warehouse
    _run(commands['genopt sql "select 1"'], env)  # warms the disk cache
    for cmd in commands.values():
        _run(cmd, env)  # one unmeasured start each: byte-code caches are written

    times: dict[str, list[float]] = {name: [] for name in commands}
    rng = random.Random(0)
    for r in range(rounds):
        order = list(commands)
        rng.shuffle(order)
        for name in order:
            times[name].append(_run(commands[name], env))
        common.log(f"round {r + 1}/{rounds} done (load {common.loadavg():.2f})")

    floor = statistics.median(times["python -c pass"])
    rows: list[list[Any]] = []
    out: dict[str, Any] = {}
    for name, values in times.items():
        med = statistics.median(values)
        out[name] = {"median_s": med, "ratio_to_python": med / floor, "all_s": values}
        rows.append([name, med, med / floor, min(values), max(values)])
    common.print_table(
        ["command", "median s", "x python -c pass", "min s", "max s"],
        rows,
        title=f"fresh processes, {rounds} shuffled rounds",
    )
    for name in ("genopt --help", 'genopt sql "select 1"'):
        verdict = "meets" if out[name]["median_s"] <= TARGET_S else "MISSES"
        print(f"{name}: {out[name]['median_s']:.3f} s {verdict} the {TARGET_S} s target")
    common.write_results(
        "bench_import",
        {
            "command": common.command_line("bench_import", argv),
            "rounds": rounds,
            "target_s": TARGET_S,
            "results": out,
            "machine": common.machine_info(),
            "library": common.library_state(),
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
