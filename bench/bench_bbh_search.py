"""The BBH comparison of issue 14: the start instruction, the nightly search, GEPA and
DSPy MIPROv2, on one harness (:mod:`bench.bbh_harness`), resumable per (task, seed, arm).

Protocol (issue 14, "## The benchmark"; the harness's docstring quotes the rest):

    **Arms:** start, the search, GEPA, MIPROv2. [...]
    **Statistics:** paired per item, exact McNemar, per seed pooled over the 3 tasks (278
    items). Report p for every comparison. "Significantly below" means one-sided p < 0.05.
    **Report:** each arm's test accuracy per task and seed; the pooled differences with p;
    task and optimizer calls; CPU minutes per arm.
    **Targets:** pooled gain over the start >= +0.06 with p < 0.05, in each seed; ahead of
    the best re-run peer by >= +0.04 pooled (report p); no (task, seed) significantly below
    its start; sports_understanding >= 0.70 on the old items 25-74 (start 0.60,
    hand-written instruction 0.64); a night <= 30 CPU-minutes.

The arms:

* ``start``: :data:`~bench.bbh_harness.START_INSTRUCTION`, no demos (no optimization
  calls; the same for every seed, so its second seed is all cached calls).
* ``search``: in a fresh warehouse, "production" runs of the pipeline
  (:mod:`bench.bbh_pipeline`) under its stable params on the pool items (runs of
  :data:`RUN_ITEMS` items, in a seeded order; per-item feedback ``correct``; replayable
  inputs), a harvest of the right answers as verified experiences (the demo source), then
  ONE night: ``optimize(OptimizerSettings(search=True, ...))`` with evidence / selection /
  confirmation 30 / 40 / 80 items (snarks 20 / 30 / 50), the task-call budget the 700 cap
  minus the recording's calls, the optimizer-call budget 12, the optimizer model of the
  harness. The result is the winner's values when the night proposed (confirmed by the
  sign test), else the start values (``not_better``/``no_proposal``); the notes say which,
  with the night's summary, pools, dropped counts and confirmation statistics.
* the peers (``gepa``, ``miprov2``): ``bench.bbh_peers.ARMS`` (name ->
  ``fn(ArmContext) -> ArmResult``), imported lazily; an arm whose module or packages are
  missing is skipped with a note.

Every arm's final instruction and demos are tested on the test items through the harness's
template and parser (:func:`~bench.bbh_harness.test_accuracy`; test calls are not counted).
Each finished triple is saved at once to ``bench/results/bbh_search/results.json``
(read-modify-write under a lock file, atomic replace: two processes may run different
(task, seed) pairs), with per-item test scores, calls, CPU seconds of the process
(``resource.getrusage``, the arm only; the Prefect test server is another process and not
counted) and wall seconds. A rerun skips finished triples. Task replies are cached in
``bench/results/bbh_search/cache/`` (one file per reply).

    GENOPT_LOCAL_THREADS=1 nice -n 5 python -m bench.bench_bbh_search --arms start,search
    python -m bench.bench_bbh_search --report      # tables + targets, writes report.md
    python -m bench.bench_bbh_search --quick       # scripted models, tiny split, < 2 min
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import bbh_harness as h
from bench import common
from bench.common import log

ARMS = ("start", "search", "gepa", "miprov2")
#: the re-run peers (``bench.bbh_peers``)
PEERS = ("gepa", "miprov2")
SEEDS = (0, 1)
#: labelled items per recorded "production" run of the search arm
RUN_ITEMS = 5
#: the search's pools (evidence, selection, confirmation) per task
POOLS: dict[str, dict[str, int]] = {
    "snarks": {"evidence_items": 20, "selection_items": 30, "confirmation_items": 50},
}
DEFAULT_POOLS = {"evidence_items": 30, "selection_items": 40, "confirmation_items": 80}
QUICK_POOLS = {"evidence_items": 10, "selection_items": 10, "confirmation_items": 20}
#: ``--quick``: the first items of a task, the test range within them
QUICK_ITEMS = 50
QUICK_TEST_RANGE = (0, 10)
#: seconds per optimizer call (the shared 2-core machine is slow; the default is 300 s)
OPTIMIZER_TIMEOUT_S = 1800.0
TARGETS = {
    "gain_over_start": 0.06,
    "ahead_of_best_peer": 0.04,
    "sports_old_items": 0.70,
    "night_cpu_min": 30.0,
    "alpha": 0.05,
}
RESULTS_NAME = "bbh_search"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- the arms -----------------------------------------------------------------------------


def start_arm(ctx: h.ArmContext) -> h.ArmResult:
    """The start instruction, no demos, no optimization."""
    return h.ArmResult(h.START_INSTRUCTION, [], 0, 0, 0.0, {})


def pools_for(task: str, quick: bool) -> dict[str, int]:
    """The search's pool sizes for ``task``.

    Example:
        >>> pools_for("snarks", False)["confirmation_items"], pools_for("navigate", False)
        (50, {'evidence_items': 30, 'selection_items': 40, 'confirmation_items': 80})
    """
    return dict(QUICK_POOLS if quick else POOLS.get(task, DEFAULT_POOLS))


def record_runs(flow: Any, pool: Sequence[h.Example], seed: int) -> list[list[str]]:
    """Run the pipeline (stable params, production) on the pool in runs of
    :data:`RUN_ITEMS` items, in an order seeded by ``seed``; the item ids of each run."""
    order = list(pool)
    random.Random(seed).shuffle(order)
    runs = []
    for i in range(0, len(order), RUN_ITEMS):
        chunk = order[i : i + RUN_ITEMS]
        flow(examples=[{"id": e.id, "input": e.input, "target": e.target} for e in chunk])
        runs.append([e.id for e in chunk])
    return runs


def search_arm(ctx: h.ArmContext) -> h.ArmResult:
    """Record production runs on the pool, harvest, then one night (see the module
    docstring); the night's proposal, or the start values."""
    import prefect_genopt as genopt
    from bench import bbh_pipeline as bp
    from prefect_genopt.optimize import OptimizerSettings, optimize

    cpu0 = _cpu()
    wpath = ctx.work_dir / "warehouse.duckdb"
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GENOPT_WAREHOUSE"] = str(wpath)
    bp.configure(ctx.models.task_model)
    flow = bp.flow_for(ctx.task)
    pipeline = bp.pipeline_name(ctx.task)
    t0 = time.perf_counter()
    runs = record_runs(flow, ctx.split.pool, ctx.seed)
    recording = ctx.models.counts()["task_calls"]
    ctx.progress(
        f"recorded {len(runs)} runs ({recording} task calls) in {time.perf_counter() - t0:.0f}s"
    )
    harvested = genopt.harvest(pipeline, "correct")
    ctx.progress(f"harvest: {harvested}")
    pools = pools_for(ctx.task, ctx.quick)
    settings = OptimizerSettings(
        pipeline=pipeline,
        kpi="correct",
        search=True,
        starting_artifact={"editable": ["instruction", "demos"]},
        seed=ctx.seed,
        task_call_budget=max(ctx.task_call_cap - recording, 1),
        optimizer_call_budget=ctx.optimizer_call_cap,
        model=ctx.models.optimizer_model,
        timeout_s=OPTIMIZER_TIMEOUT_S,
        **pools,
    )
    cpu_night0, wall_night0 = _cpu(), time.perf_counter()
    result = optimize(settings, progress=lambda m: ctx.progress(f"night: {m[:240]}"))
    night_cpu, night_wall = _cpu() - cpu_night0, time.perf_counter() - wall_night0
    status = getattr(result, "status", None)
    winner = getattr(result, "winner", None)
    proposed = status == "proposed" and winner is not None
    values = dict(winner.values) if proposed else {"instruction": h.START_INSTRUCTION, "demos": []}
    pool_sizes = {k: list(v) for k, v in (getattr(result, "pools", None) or {}).items()}
    short = {k: v for k, v in pool_sizes.items() if len(v) == 2 and v[1] < v[0]}
    confirmation = getattr(result, "confirmation", None)
    selection = getattr(result, "selection", None)
    counts = ctx.models.counts()
    night_id = getattr(result, "night_id", None)
    notes: dict[str, Any] = {
        "candidate_scores": _safe(candidate_score_summary, night_id),
        "outcome": "proposal (confirmed)" if proposed else f"start values ({status})",
        "status": status,
        "summary": result.summary() if hasattr(result, "summary") else None,
        "stop_reason": getattr(result, "stop_reason", None),
        "proposal_id": getattr(result, "proposal_id", None),
        "night_id": getattr(result, "night_id", None),
        "pools": pool_sizes,
        "pools_wanted": pools,
        "pools_short": short
        or None,  # hash buckets are uneven with few runs (pools.py borrows to even them)
        "dropped": getattr(result, "dropped", None),
        "needed_items": getattr(result, "needed_items", None),
        "confirmation": confirmation.as_dict() if confirmation is not None else None,
        "selection": _selection_summary(selection),
        "winner": _candidate(winner),
        "candidates": [_candidate(c) for c in getattr(result, "candidates", []) or []],
        "night_notes": list(getattr(result, "notes", []) or []),
        "recorded_runs": len(runs),
        "recording_task_calls": recording,
        "night_task_calls_counted_by_night": getattr(result, "task_calls", None),
        "night_optimizer_calls_counted_by_night": getattr(result, "optimizer_calls", None),
        "harvest": str(harvested),
        "night_cpu_s": round(night_cpu, 1),
        "night_wall_s": round(night_wall, 1),
        "warehouse": str(wpath),
        "settings": settings.recorded(),
    }
    return h.ArmResult(
        instruction=str(values.get("instruction") or h.START_INSTRUCTION),
        demos=bp.demos_of(values),
        task_calls=counts["task_calls"],
        optimizer_calls=counts["optimizer_calls"],
        cpu_s=round(_cpu() - cpu0, 1),
        notes=notes,
    )


def _safe(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or the error as a string (bookkeeping must not lose a triple)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def candidate_score_summary(night_id: str | None, warehouse: Any = None) -> list[dict[str, Any]]:
    """Per candidate and pool of a night's ``candidate_scores``: generator, items, mean."""
    import prefect_genopt as genopt

    wh = warehouse if warehouse is not None else genopt.Warehouse()
    rows = wh.sql(
        "SELECT candidate_id, generator, pool, count(*) AS n, avg(score) AS mean "
        "FROM candidate_scores WHERE night_id = ? GROUP BY ALL ORDER BY pool, candidate_id",
        [night_id],
    )
    return [{**r, "n": int(r["n"]), "mean": float(r["mean"])} for r in rows]


# -- ablations (issue 14: demos only, drafts only, the old ``>=`` rule; and format only) ----

#: where the ablation arms read the search's triple (set by :func:`run_all`)
_RESULTS: dict[str, Path] = {}


def _search_notes(ctx: h.ArmContext) -> dict[str, Any]:
    path = _RESULTS.get("path")
    rec = (
        load_results(path)["triples"].get(triple_key(ctx.task, ctx.seed, "search"))
        if path
        else None
    )
    if not rec:
        raise RuntimeError(f"no search result for {ctx.task} seed {ctx.seed} to ablate")
    notes = dict(rec.get("notes") or {})
    if not isinstance(notes.get("candidate_scores"), list):  # older triples: read it back
        import prefect_genopt as genopt

        wh = genopt.Warehouse(notes["warehouse"])
        try:
            notes["candidate_scores"] = candidate_score_summary(notes["night_id"], wh)
        finally:
            wh.close()
    return notes


def best_of(notes: dict[str, Any], generator: str) -> dict[str, Any] | None:
    """The candidate of ``generator`` the selection ranked best: the most selection items
    scored (it went furthest in the halving), then the highest mean; None if none.

    Example:
        >>> notes = {"candidates": [{"candidate_id": "a", "generator": "drafts"},
        ...                         {"candidate_id": "b", "generator": "drafts"}],
        ...          "candidate_scores": [
        ...              {"candidate_id": "a", "pool": "selection", "n": 16, "mean": 0.9},
        ...              {"candidate_id": "b", "pool": "selection", "n": 40, "mean": 0.6}]}
        >>> best_of(notes, "drafts")["candidate_id"]
        'b'
    """
    scored = {
        r["candidate_id"]: (r["n"], r["mean"])
        for r in notes.get("candidate_scores") or []
        if r["pool"] == "selection"
    }
    mine = [c for c in notes.get("candidates") or [] if c["generator"] == generator]
    mine = [c for c in mine if c["candidate_id"] in scored]
    return max(mine, key=lambda c: scored[c["candidate_id"]]) if mine else None


def _values_result(values: dict[str, Any] | None, note: dict[str, Any]) -> h.ArmResult:
    from bench import bbh_pipeline as bp

    values = values or {"instruction": h.START_INSTRUCTION, "demos": []}
    return h.ArmResult(
        str(values.get("instruction") or h.START_INSTRUCTION), bp.demos_of(values), 0, 0, 0.0, note
    )


def ablation_arm(generator: str) -> Callable[[h.ArmContext], h.ArmResult]:
    """The search with only ``generator``'s candidates: its best on selection (no calls)."""

    def arm(ctx: h.ArmContext) -> h.ArmResult:
        best = best_of(_search_notes(ctx), generator)
        return _values_result(
            best["values"] if best else None,
            {
                "outcome": f"best {generator} candidate on selection, not confirmed"
                if best
                else f"no {generator} candidate scored: start values",
                "candidate_id": best["candidate_id"] if best else None,
            },
        )

    return arm


def old_rule_arm(ctx: h.ArmContext) -> h.ArmResult:
    """The search's winner accepted by the old rule: confirmation mean >= the parent's (a
    tie goes to the candidate) instead of the sign test."""
    notes = _search_notes(ctx)
    conf = notes.get("confirmation") or {}
    winner = notes.get("winner")
    ok = winner is not None and conf and conf.get("diff_mean", -1.0) >= 0
    return _values_result(
        winner["values"] if ok else None,
        {
            "outcome": f"winner accepted on >= (confirmation diff {conf.get('diff_mean')})"
            if ok
            else "winner not >= its parent on confirmation (or no winner): start values",
            "candidate_id": winner["candidate_id"] if ok else None,
        },
    )


ABLATIONS: dict[str, Callable[[h.ArmContext], h.ArmResult]] = {
    "demos-only": ablation_arm("demos"),
    "drafts-only": ablation_arm("drafts"),
    "format-only": ablation_arm("format"),
    "old-rule": old_rule_arm,
}


def _candidate(c: Any) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "candidate_id": c.candidate_id,
        "generator": c.generator,
        "changed": list(c.changed),
        "values": c.values,
    }


def _selection_summary(selection: Any) -> Any:
    if selection is None:
        return None
    out: dict[str, Any] = {}
    for name in ("winner", "rungs", "stop_reason"):
        v = getattr(selection, name, None)
        if v is not None:
            out[name] = v.candidate_id if hasattr(v, "candidate_id") else v
    return json.loads(json.dumps(out, default=str))


def arm_functions(names: Sequence[str]) -> tuple[dict[str, Callable[..., Any]], dict[str, str]]:
    """The arm functions asked for, and the ones skipped with why (peers whose module or
    packages are missing)."""
    own: dict[str, Callable[..., Any]] = {
        "start": start_arm,
        "search": search_arm,
        **ABLATIONS,
    }
    fns: dict[str, Callable[..., Any]] = {}
    skipped: dict[str, str] = {}
    peers: dict[str, Any] | None = None
    peer_error = ""
    for name in names:
        if name in own:
            fns[name] = own[name]
            continue
        if peers is None:
            try:
                peers = dict(importlib.import_module("bench.bbh_peers").ARMS)
            except Exception as exc:  # noqa: BLE001 - a missing peer is a note, not a crash
                peers, peer_error = {}, f"{type(exc).__name__}: {exc}"
        if name in peers:
            fns[name] = peers[name]
        else:
            skipped[name] = peer_error or "not in bench.bbh_peers.ARMS"
    return fns, skipped


# -- results ------------------------------------------------------------------------------


def results_dir(quick: bool) -> Path:
    """``bench/results/bbh_search`` (``GENOPT_BENCH_RESULTS``), or for ``--quick`` a folder
    of the work directory."""
    s = common.settings()
    return s.work / f"{RESULTS_NAME}-quick" if quick else s.results / RESULTS_NAME


def triple_key(task: str, seed: int, arm: str) -> str:
    """The key of a finished triple in ``results.json``.

    Example:
        >>> triple_key("navigate", 1, "search")
        'navigate/1/search'
    """
    return f"{task}/{seed}/{arm}"


def load_results(path: Path) -> dict[str, Any]:
    """The saved results (empty when there are none yet)."""
    if not path.is_file():
        return {"triples": {}, "runs": []}
    data = json.loads(path.read_text())
    data.setdefault("triples", {})
    data.setdefault("runs", [])
    return data


def update_results(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, change and atomically rewrite ``results.json`` under its lock file (another
    process may be saving its own triples)."""
    with h.file_lock(path.with_name(path.name + ".lock")):
        data = load_results(path)
        change(data)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        os.replace(tmp, path)
    return data


def protocol() -> dict[str, Any]:
    """The protocol as recorded in the results."""
    return {
        "tasks": list(h.TASKS),
        "split": "test = file items 25-124 (snarks 25-102); pool = the others",
        "template": "system = instruction; demos as user/assistant pairs; then the question",
        "task_model": "embedded Qwen2.5-Coder-1.5B-Instruct Q4_K_M, temperature 0, "
        f"max_tokens {h.TASK_MAX_TOKENS}; replies cached by (backend, messages, max_tokens)",
        "optimizer_model": "the same embedded model, calls as the method asks",
        "parser": "yes/no: first \\b(yes|no)\\b; snarks: first (A)/(B), else a leading A/B",
        "caps": {"task_calls": h.TASK_CALL_CAP, "optimizer_calls": h.OPTIMIZER_CALL_CAP},
        "cap_counting": "cached task calls count; test calls do not",
        "start_instruction": h.START_INSTRUCTION,
        "search": {
            "run_items": RUN_ITEMS,
            "pools": {t: pools_for(t, False) for t in h.TASKS},
            "task_call_budget": "700 minus the recording's calls",
            "editable": ["instruction", "demos"],
        },
        "cpu": "resource.getrusage(RUSAGE_SELF) of the arm (the Prefect server is a child "
        "process, not counted)",
    }


# -- running ------------------------------------------------------------------------------


def task_examples(task: str, quick: bool) -> list[h.Example]:
    """The task's items (``--quick``: the first :data:`QUICK_ITEMS`, synthetic when the
    data file is missing)."""
    path = h.data_dir() / f"{task}.json"
    if quick and not path.is_file():
        return h.synthetic_task(task, QUICK_ITEMS)
    items = h.load_task(task)
    return items[:QUICK_ITEMS] if quick else items


def run_triple(
    models: h.Models, fn: Callable[..., Any], arm: str, task: str, seed: int, quick: bool
) -> dict[str, Any]:
    """One arm on one task and seed: its run, then its test; the record to save."""
    examples = task_examples(task, quick)
    sp = h.split(task, examples, QUICK_TEST_RANGE if quick else None)
    work = common.work_dir(RESULTS_NAME + ("-quick" if quick else "")) / f"{task}-s{seed}-{arm}"
    ctx = h.ArmContext(
        task=task,
        seed=seed,
        split=sp,
        models=models,
        work_dir=work,
        progress=lambda m: log(f"  [{task} s{seed} {arm}] {m}"),
        quick=quick,
    )
    models.reset_counts()
    models.set_caps(ctx.task_call_cap, ctx.optimizer_call_cap)
    cpu0, wall0 = _cpu(), time.perf_counter()
    error = None
    try:
        res = fn(ctx)
    finally:
        models.set_caps(None, None)
    cpu_arm, wall_arm = _cpu() - cpu0, time.perf_counter() - wall0
    counts = models.counts()
    cpu1, wall1 = _cpu(), time.perf_counter()
    acc, scores = h.test_accuracy(models, task, res.instruction, res.demos, sp.test)
    test_counts = models.counts()
    return {
        "task": task,
        "seed": seed,
        "arm": arm,
        "test_accuracy": acc,
        "n_test": len(scores),
        "test_scores": {e.id: s for e, s in zip(sp.test, scores, strict=True)},
        "instruction": res.instruction,
        "demos": [asdict(d) for d in res.demos],
        "task_calls": counts["task_calls"],
        "optimizer_calls": counts["optimizer_calls"],
        "arm_reported": {
            "task_calls": res.task_calls,
            "optimizer_calls": res.optimizer_calls,
            "cpu_s": res.cpu_s,
        },
        "counts": counts,
        "cap_hit": models.cap_hit,
        "test_calls": test_counts["test_calls"] - counts["test_calls"],
        "test_cached": test_counts["test_cached"] - counts["test_cached"],
        "cpu_s": round(cpu_arm, 1),
        "wall_s": round(wall_arm, 1),
        "test_cpu_s": round(_cpu() - cpu1, 1),
        "test_wall_s": round(time.perf_counter() - wall1, 1),
        "notes": res.notes,
        "error": error,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_all(
    path: Path,
    tasks: Sequence[str],
    seeds: Sequence[int],
    arms: Sequence[str],
    quick: bool,
    argv: Sequence[str] = (),
) -> list[str]:
    """Run every (task, seed, arm) not yet saved in ``path`` (task first, then seed, then
    arm, so the first pair finishes early), saving each as it finishes; the keys run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _RESULTS["path"] = path
    fns, skipped = arm_functions(arms)
    for name, why in skipped.items():
        log(f"arm {name} skipped: {why}")
    done = load_results(path)["triples"]
    todo = [
        (t, s, a)
        for t in tasks
        for s in seeds
        for a in arms
        if a in fns and triple_key(t, s, a) not in done
    ]
    skipped_done = [
        k for t in tasks for s in seeds for a in arms if (k := triple_key(t, s, a)) in done
    ]
    if skipped_done:
        log(f"already saved, skipped: {skipped_done}")
    info = common.library_state()
    run = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": list(argv),
        "git": info,
        "pid": os.getpid(),
        "todo": [triple_key(*x) for x in todo],
        "skipped_done": skipped_done,
        "skipped_arms": skipped,
        "local_threads": os.environ.get("GENOPT_LOCAL_THREADS"),
        "quick": quick,
        "machine": common.machine_info(),
    }
    update_results(path, lambda d: (d.__setitem__("protocol", protocol()), d["runs"].append(run)))
    if not todo:
        return []
    log(f"{common.describe_library(info)}; todo {run['todo']}")
    models = h.Models(path.parent / "cache", quick=quick)
    if any(a in ("search", *ABLATIONS) for _, _, a in todo):
        # load the library's search stack now, once: a long run must not import half of a
        # checkout that changes under it (a later import would mix two versions)
        importlib.import_module("prefect_genopt.optimize.search.night")
        importlib.import_module("bench.bbh_pipeline")
    ran = []
    with _prefect(any(a == "search" for _, _, a in todo)):
        for task, seed, arm in todo:
            key = triple_key(task, seed, arm)
            log(f"{task} seed {seed} arm {arm}: start")
            try:
                rec = run_triple(models, fns[arm], arm, task, seed, quick)
            except Exception as exc:  # noqa: BLE001 - logged; the other triples go on
                log(f"{key} FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                if quick:
                    raise
                continue
            rec["git"] = info
            update_results(path, lambda d, k=key, r=rec: d["triples"].__setitem__(k, r))
            ran.append(key)
            log(
                f"{key}: test {rec['test_accuracy']:.3f} ({rec['task_calls']} task, "
                f"{rec['optimizer_calls']} optimizer calls, {rec['cpu_s'] / 60:.1f} CPU min); saved"
            )
    return ran


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", default=",".join(h.TASKS), help="comma-separated BBH tasks")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    ap.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"comma-separated, of {ARMS}, or the ablations {tuple(ABLATIONS)} (after search)",
    )
    ap.add_argument("--quick", action="store_true", help="scripted models, tiny split, 1 task")
    ap.add_argument("--report", action="store_true", help="print and write report.md, exit")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS and a not in ABLATIONS]
    if unknown or any(t not in h.TASKS for t in tasks):
        print(f"unknown arms {unknown} or tasks {tasks} (known: {ARMS}, {h.TASKS})")
        return 2
    out_dir = results_dir(args.quick)
    path = out_dir / "results.json"
    if args.report:
        text = report(load_results(path))
        print(text)
        (out_dir / "report.md").write_text(text + "\n")
        return 0
    if args.quick:
        tasks, seeds = tasks[:1], seeds[:1]
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(common.settings().work / f"{RESULTS_NAME}-quick", ignore_errors=True)
    common.prefect_env()
    os.environ.setdefault("GENOPT_LOCAL_THREADS", "1")
    # a stopped run (kill PID) unwinds: the Prefect test server it started stops with it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_all(path, tasks, seeds, arms, args.quick, sys.argv[1:] if argv is None else list(argv))
    text = report(load_results(path))
    print(text)
    if args.quick:
        (out_dir / "report.md").write_text(text + "\n")
    return 0


class _prefect:
    """A Prefect test harness (and no flow heartbeats) when an arm runs flows."""

    def __init__(self, needed: bool) -> None:
        self.needed = needed
        self._stack: Any = None

    def __enter__(self) -> None:
        if not self.needed:
            return
        import contextlib

        import prefect.settings as ps
        from prefect.testing.utilities import prefect_test_harness

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(prefect_test_harness(server_startup_timeout=180))
        self._stack.enter_context(
            ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        )
        log("prefect test harness up")

    def __exit__(self, *exc: Any) -> None:
        if self._stack is not None:
            self._stack.close()


# -- the report ---------------------------------------------------------------------------


def _scores(rec: dict[str, Any]) -> dict[str, float]:
    return {f"{rec['task']}:{k}": float(v) for k, v in rec["test_scores"].items()}


def _pooled(triples: dict[str, Any], seed: int, arm: str, tasks: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in tasks:
        rec = triples.get(triple_key(t, seed, arm))
        if rec:
            out.update(_scores(rec))
    return out


def compare(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """``b`` against ``a`` on the items both scored: accuracies, difference, exact McNemar
    (two-sided), the one-sided sign test p that ``b`` is better and that it is worse, and
    the paired 95% CI of the difference."""
    from prefect_genopt.optimize.search.stats import mcnemar_exact, sign_test

    both = sorted(set(a) & set(b))
    aa, bb = {k: a[k] for k in both}, {k: b[k] for k in both}
    better = sign_test(aa, bb)
    worse = sign_test(bb, aa)
    n = len(both)
    return {
        "n": n,
        "tasks": sorted({k.split(":", 1)[0] for k in both}),
        "acc_a": sum(aa.values()) / n if n else float("nan"),
        "acc_b": sum(bb.values()) / n if n else float("nan"),
        "diff": better.diff_mean,
        "wins": better.wins,
        "losses": better.losses,
        "p_mcnemar": mcnemar_exact(aa, bb),
        "p_better": better.p_value,
        "p_worse": worse.p_value,
        "ci": (better.ci_low, better.ci_high),
    }


def _fmt_cmp(c: dict[str, Any]) -> str:
    return (
        f"{c['acc_a']:.3f} → {c['acc_b']:.3f} ({c['diff']:+.3f}, 95% CI {c['ci'][0]:+.3f} to "
        f"{c['ci'][1]:+.3f}; +{c['wins']}/-{c['losses']}; McNemar p = {c['p_mcnemar']:.3g}, "
        f"one-sided p = {c['p_better']:.3g}) on {c['n']} items ({', '.join(c['tasks'])})"
    )


def report(results: dict[str, Any]) -> str:
    """Markdown: accuracy per task, seed and arm; pooled comparisons with p; calls; CPU;
    the targets met or missed by how much."""
    triples: dict[str, Any] = results.get("triples", {})
    if not triples:
        return "no finished (task, seed, arm) yet"
    tasks = [t for t in h.TASKS if any(r["task"] == t for r in triples.values())]
    seeds = sorted({int(r["seed"]) for r in triples.values()})
    arms = [a for a in (*ARMS, *ABLATIONS) if any(r["arm"] == a for r in triples.values())]
    out = ["# BBH: start, the search and the peers (issue 14)", ""]
    out += [
        "## Test accuracy per task and seed",
        "",
        "| task | seed | " + " | ".join(arms) + " |",
        "|---|---|" + "---|" * len(arms),
    ]
    for t in tasks:
        for s in seeds:
            cells = []
            for a in arms:
                r = triples.get(triple_key(t, s, a))
                cells.append(f"{r['test_accuracy']:.3f} (n={r['n_test']})" if r else "–")
            out.append(f"| {t} | {s} | " + " | ".join(cells) + " |")
    out += ["", "## Pooled per seed over the tasks", ""]
    peers = [a for a in arms if a in PEERS]
    pooled_cmp: dict[tuple[int, str], dict[str, Any]] = {}
    for s in seeds:
        start = _pooled(triples, s, "start", tasks)
        out.append(f"**seed {s}** (each comparison on the tasks both arms finished)")
        out.append("")
        for a in arms:
            if a == "start":
                continue
            mine = _pooled(triples, s, a, tasks)
            if not start or not mine:
                continue
            c = compare(start, mine)
            pooled_cmp[(s, a)] = c
            out.append(f"- {a} vs start: {_fmt_cmp(c)}")
        search = _pooled(triples, s, "search", tasks)
        peer_acc = {
            p: compare(search, v)["acc_b"]
            for p in peers
            if (v := _pooled(triples, s, p, tasks)) and search and set(v) & set(search)
        }
        if search and peer_acc:
            best = max(peer_acc, key=peer_acc.__getitem__)
            c = compare(_pooled(triples, s, best, tasks), search)
            pooled_cmp[(s, "search-vs-best-peer")] = {**c, "peer": best}
            out.append(f"- search vs best peer ({best}): {_fmt_cmp(c)}")
        out.append("")
    out += [
        "## Calls and CPU per arm",
        "",
        "| task | seed | arm | task calls (cached) | optimizer calls | arm CPU min | arm wall min "
        "| outcome |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        for s in seeds:
            for a in arms:
                r = triples.get(triple_key(t, s, a))
                if not r:
                    continue
                n = r.get("notes") or {}
                outcome = n.get("outcome") or ""
                if a == "search" and n.get("pools_short"):
                    outcome += f"; short pools {n['pools_short']}"
                out.append(
                    f"| {t} | {s} | {a} | {r['task_calls']} ({r['counts'].get('task_cached', 0)})"
                    f" | {r['optimizer_calls']} | {r['cpu_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} "
                    f"| {outcome} |"
                )
    out += [
        "",
        "Per arm over the finished triples:",
        "",
        "| arm | triples | task calls (mean) | optimizer calls (mean) | CPU min (mean; total) |",
        "|---|---|---|---|---|",
    ]
    for a in arms:
        rs = [r for r in triples.values() if r["arm"] == a]
        cpu = [r["cpu_s"] / 60 for r in rs]
        out.append(
            f"| {a} | {len(rs)} | {common.mean([r['task_calls'] for r in rs]):.0f} | "
            f"{common.mean([r['optimizer_calls'] for r in rs]):.1f} | "
            f"{common.mean(cpu):.1f}; {sum(cpu):.1f} |"
        )
    out += ["", "## Targets", ""]
    out += _targets(triples, tasks, seeds, pooled_cmp)
    out += ["", "## Headroom: the best arm per task, picked on the test items", ""]
    out += [
        "An upper bound for any choice among the values these arms found: each task takes the",
        "arm that scored best on its own test items (so the choice has seen the test), and the",
        "pooled result is compared with the start on the same items.",
        "",
    ]
    out += _headroom(triples, tasks, seeds)
    out += ["", "## Final instructions", ""]
    for t in tasks:
        for s in seeds:
            for a in arms:
                r = triples.get(triple_key(t, s, a))
                if r and a != "start":
                    out.append(
                        f"- {t} s{s} {a}: `{r['instruction'][:300]}` + {len(r['demos'])} demo(s)"
                    )
    return "\n".join(out)


def _headroom(triples: dict[str, Any], tasks: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """Per seed: the best arm of each task on its test items, pooled, against the start."""
    out = []
    for s in seeds:
        start: dict[str, float] = {}
        best: dict[str, float] = {}
        picks = []
        for t in tasks:
            st = triples.get(triple_key(t, s, "start"))
            if not st:
                continue
            recs = [r for r in triples.values() if r["task"] == t and int(r["seed"]) == s]
            top = max(recs, key=lambda r: (r["test_accuracy"], r["arm"] == "start"))
            start.update(_scores(st))
            best.update(_scores(top))
            picks.append(f"{t}: {top['arm']} {top['test_accuracy']:.3f}")
        if start:
            out.append(f"- seed {s} ({'; '.join(picks)}): {_fmt_cmp(compare(start, best))}")
    return out


def _old_items(rec: dict[str, Any]) -> float | None:
    lo, hi = h.OLD_TEST_RANGE
    ids = {f"{rec['task']}-{i:03d}" for i in range(lo, hi)}
    got = [v for k, v in rec["test_scores"].items() if k in ids]
    return sum(got) / len(got) if got else None


def _targets(
    triples: dict[str, Any],
    tasks: Sequence[str],
    seeds: Sequence[int],
    pooled: dict[tuple[int, str], dict[str, Any]],
) -> list[str]:
    T = TARGETS
    out = []

    def note(c: dict[str, Any]) -> str:
        done = c["tasks"]
        return "" if set(done) == set(h.TASKS) else f" (only {', '.join(done)} so far)"

    for s in seeds:
        c = pooled.get((s, "search"))
        if c:
            met = c["diff"] >= T["gain_over_start"] and c["p_better"] < T["alpha"]
            out.append(
                f"- seed {s}: pooled gain over start {c['diff']:+.3f} (one-sided p = "
                f"{c['p_better']:.3g}; target ≥ +{T['gain_over_start']:.2f} with p < 0.05): "
                + ("**met**" if met else f"**missed** by {T['gain_over_start'] - c['diff']:+.3f}")
                + (" (p not below 0.05)" if c["p_better"] >= T["alpha"] else "")
                + note(c)
            )
        c = pooled.get((s, "search-vs-best-peer"))
        if c:
            met = c["diff"] >= T["ahead_of_best_peer"]
            out.append(
                f"- seed {s}: search ahead of the best peer ({c['peer']}) by {c['diff']:+.3f} "
                f"(McNemar p = {c['p_mcnemar']:.3g}; target ≥ +{T['ahead_of_best_peer']:.2f}): "
                + (
                    "**met**"
                    if met
                    else f"**missed** by {T['ahead_of_best_peer'] - c['diff']:+.3f}"
                )
                + note(c)
            )
    below = []
    for t in tasks:
        for s in seeds:
            st, se = triples.get(triple_key(t, s, "start")), triples.get(triple_key(t, s, "search"))
            if st and se:
                c = compare(_scores(st), _scores(se))
                if c["p_worse"] < T["alpha"]:
                    below.append(f"{t} s{s} ({c['diff']:+.3f}, p = {c['p_worse']:.3g})")
    out.append(
        "- no (task, seed) significantly below its start: "
        + ("**met**" if not below else f"**missed**: {', '.join(below)}")
    )
    for s in seeds:
        r = triples.get(triple_key("sports_understanding", s, "search"))
        st = triples.get(triple_key("sports_understanding", s, "start"))
        if r:
            got = _old_items(r)
            base = _old_items(st) if st else None
            if got is not None:
                out.append(
                    f"- seed {s}: sports_understanding on the old items 25-74: {got:.2f} "
                    + (f"(start here {base:.2f}) " if base is not None else "")
                    + f"(target ≥ {T['sports_old_items']:.2f}): "
                    + (
                        "**met**"
                        if got >= T["sports_old_items"]
                        else f"**missed** by {T['sports_old_items'] - got:.2f}"
                    )
                )
    nights = [
        (k, (r.get("notes") or {}).get("night_cpu_s"), r["cpu_s"])
        for k, r in triples.items()
        if r["arm"] == "search"
    ]
    for k, night_cpu, arm_cpu in nights:
        if night_cpu is None:
            continue
        m = night_cpu / 60
        out.append(
            f"- {k}: night {m:.1f} CPU min (with the recording {arm_cpu / 60:.1f}; target ≤ "
            f"{T['night_cpu_min']:.0f}): "
            + (
                "**met**"
                if m <= T["night_cpu_min"]
                else f"**missed** by {m - T['night_cpu_min']:.1f}"
            )
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
