"""The replay gate: a candidate is replayed offline before it reaches real traffic.

Before a canary starts, the pipeline is re-run from its recorded entrypoint with the
candidate's params on the recorded inputs of recent stable runs that were **not**
the proposal's evidence, on the ``replay`` arm (apart from production: the canary
analysis and the optimizer never count it). The pipeline scores itself as it does in
production (its per-item KPI feedback: labels, a rule or an LLM judge). The candidate's
KPI is compared with what stable scored on the *same items* in the recorded runs; a
candidate worse by more than the tolerance is stopped, with the numbers recorded in
``replay_gates``. One recorded run replayed costs one pipeline run's worth of LLM calls.

A run is replayable when its recorded inputs are whole (not truncated, no redacted
secret) and its pipeline's entrypoint imports in this process (from the file the
pipeline was recorded running from, whatever the current directory). When nothing can
be replayed the gate is ``skipped`` (recorded, with the reason), and the rollout does
not start (``GateSkipped``, exit 4) unless it is started without the gate.

**The night's confirmation scores stand in for replays.** A proposal the nightly search
made (:mod:`prefect_genopt.optimize.search`) carries its night: the candidate's per-item
scores on the confirmation pool are in ``candidate_scores``. When a run the gate picked
is a confirmation run whose items were all scored there, for the same candidate param
set and KPI, by the same code (the fingerprint of step versions and task models,
:mod:`~prefect_genopt.replay.fingerprint`, recorded with the night's offline evidence,
equals the code's now), those scores are used and the run is not replayed again
(:attr:`GateResult.reused_run_ids`, and the reason says how many). Only the confirmation
pool's scores are reused: the selection pool chose the candidate, so its scores flatter
it. An item the night scored as a failure (a crash) counts as one here too.

Replayed flow runs carry the Prefect tags :data:`REPLAY_TAGS` (``genopt``,
``genopt-replay``); the gate's add ``genopt-gate`` and ``genopt-pipeline:<pipeline>``
(:data:`GATE_TAGS`, :func:`pipeline_tag`), so the Prefect UI can filter them out of (or
into) a view.

Example:
    >>> judge([1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], "higher", 0.05, "relative").outcome
    'stopped'
    >>> judge([1.0, 0.0], [1.0, 1.0], "higher", 0.05, "relative").outcome
    'passed'
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import importlib.util
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import prefect

from prefect_genopt import spool
from prefect_genopt.context import pinned_params
from prefect_genopt.proposals import rate, set_status
from prefect_genopt.records import row_record
from prefect_genopt.redaction import REDACTED, clean
from prefect_genopt.replay.fingerprint import code_fingerprint
from prefect_genopt.replay.steps import reuse_recorded_steps
from prefect_genopt.warehouse import Warehouse, as_warehouse
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "GateResult",
    "judge",
    "replay_gate",
    "gate_proposal",
    "replayable_runs",
    "replayable_inputs",
    "load_entrypoint",
    "recorded_entrypoint",
    "replay_run",
    "item_values",
    "llm_usage",
    "night_scores",
    "ARM",
    "REPLAY_TAGS",
    "GATE_TAGS",
    "pipeline_tag",
]

logger = logging.getLogger("prefect_genopt.replay")

#: the arm replayed runs are recorded on
ARM = "replay"
#: the Prefect tags of every replayed flow run (the gate's and the search's)
REPLAY_TAGS = ("genopt", "genopt-replay")
#: the Prefect tags of the replay gate's flow runs (and :func:`pipeline_tag`)
GATE_TAGS = (*REPLAY_TAGS, "genopt-gate")


def pipeline_tag(pipeline: str) -> str:
    """The Prefect tag naming a replay's pipeline (as the optimizer flow's runs carry it).

    Example:
        >>> pipeline_tag("triage")
        'genopt-pipeline:triage'
    """
    return f"genopt-pipeline:{pipeline}"


_TRUNCATED = "…[truncated "


@dataclass
class GateResult:
    """What the gate decided: ``passed``, ``stopped`` or ``skipped``, and why."""

    outcome: str
    reason: str
    n_items: int = 0
    stable_mean: float | None = None
    candidate_mean: float | None = None
    effect: float | None = None
    relative_effect: float | None = None
    margin: float | None = None
    source_run_ids: list[str] = field(default_factory=list)
    replay_run_ids: list[str] = field(default_factory=list)
    llm_calls: int = 0
    llm_tokens: int = 0
    seconds: float = 0.0
    gate_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: source runs scored from the proposal's night (its confirmation), not replayed
    reused_run_ids: list[str] = field(default_factory=list)
    #: items of those runs
    reused_items: int = 0

    @property
    def stopped(self) -> bool:
        return self.outcome == "stopped"


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def judge(
    stable: Sequence[float],
    candidate: Sequence[float],
    direction: str,
    tolerance: float,
    tolerance_mode: str = "relative",
) -> GateResult:
    """Compare the candidate with stable on the same items (pure).

    Stopped when the candidate's mean is worse than stable's by more than the
    tolerance (relative to stable's mean, or absolute).
    """
    if not stable or not candidate:
        return GateResult("skipped", "no item was scored on both sides")
    s, c = _mean(stable), _mean(candidate)
    sign = 1.0 if direction == "higher" else -1.0
    effect = sign * (c - s)
    margin = tolerance * abs(s) if tolerance_mode == "relative" and s != 0 else tolerance
    rel = effect / abs(s) if s != 0 else None
    numbers = (
        f"candidate {c:.4g} vs stable {s:.4g} on the same {min(len(stable), len(candidate))} "
        f"items, effect {effect:+.4g}"
        + (f" ({rel:+.1%})" if rel is not None else "")
        + f", tolerance {margin:.4g}"
    )
    if effect < -margin:
        outcome, reason = "stopped", f"worse than stable beyond the tolerance: {numbers}"
    else:
        outcome, reason = "passed", f"not worse beyond the tolerance: {numbers}"
    return GateResult(
        outcome,
        reason,
        n_items=len(candidate),
        stable_mean=s,
        candidate_mean=c,
        effect=effect,
        relative_effect=rel,
        margin=margin,
    )


def _script_path(ep: dict[str, Any]) -> Path | None:
    """The flow's source file: the recorded absolute path, else the recorded relative one
    (from the current directory, as older records hold only that); None if neither exists."""
    for candidate in (ep.get("path"), ep.get("file")):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def _load_script(path: Path | None, ep: dict[str, Any]) -> Any:
    """A flow's script, imported under a name of its own (its ``__main__`` block does not run)."""
    if path is None:
        raise ImportError(
            f"the flow's file is not found (recorded: {ep.get('path') or ep.get('file')!r}); "
            "was it moved or deleted since the pipeline last ran?"
        )
    name = "genopt_script_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _package_root(path: Path, module: str) -> Path | None:
    """The directory ``module`` is importable from, given the file it was loaded from,
    or None when they do not match.

    Example:
        >>> str(_package_root(Path("p/tests/x.py"), "tests.x"))
        'p'
        >>> str(_package_root(Path("p/pkg/__init__.py"), "pkg"))
        'p'
        >>> _package_root(Path("p/flows/x.py"), "__prefect_loader_1") is None
        True
    """
    parts = module.split(".")
    where = path.parent if path.stem == "__init__" else path.with_suffix("")
    names = where.parts
    if len(names) <= len(parts) or list(names[-len(parts) :]) != parts:
        return None
    return Path(*names[: -len(parts)])


def _import_by_file(ep: dict[str, Any]) -> Any:
    """The entrypoint's module loaded from its recorded file: by its module name, from
    the directory it is importable from (its package's relative imports keep working),
    else as a script of its own."""
    path = _script_path(ep)
    module = ep["module"]
    root = _package_root(path, module) if path is not None else None
    if root is not None and module.split(".")[0].isidentifier():
        if str(root) not in sys.path:
            sys.path.append(str(root))
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not f"{module}.".startswith(f"{exc.name or ''}."):
                raise  # the module was found; something it imports is missing
    return _load_script(path, ep)


def load_entrypoint(entrypoint: str | dict[str, Any]) -> Any:
    """The pipeline's flow object from its recorded entrypoint (module and function).

    Imported by module name when that works from here; otherwise from the file the
    pipeline was recorded running from (its absolute ``path``), whatever the current
    directory: from the directory its module is importable from, else as a script.
    """
    ep = orjson.loads(entrypoint) if isinstance(entrypoint, str) else entrypoint
    if os.getcwd() not in sys.path:  # entrypoints are relative to the project, as Prefect's
        sys.path.append(os.getcwd())
    if ep["module"] == "__main__":  # a script run as `python script.py`
        path = _script_path(ep)
        live = _running_script(str(path) if path else "")
        if live is not None:  # this process runs it: its flows as they are now (even
            try:  # ones it made at run time), without importing it a second time
                return _attr_path(live, ep["function"])
            except AttributeError:
                pass
        module = _load_script(path, ep)  # another process: load it by its file
    else:
        try:
            module = importlib.import_module(ep["module"])
        except ModuleNotFoundError as exc:
            # not importable by name from here (another directory), or a flow Prefect
            # loaded from a deployment's file path (`flows/x.py:flow`, a module name of the
            # file's stem or `__prefect_loader_...`): load it from its recorded file
            missing = exc.name or ""
            if not f"{ep['module']}.".startswith(f"{missing}."):
                raise
            module = _import_by_file(ep)
    return _attr_path(module, ep["function"])


def _attr_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _running_script(file: str) -> Any:
    """This process's ``__main__`` module when it is the script ``file``, else None."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if not file or not main_file:
        return None
    try:
        same = Path(main_file).resolve() == Path(file).resolve()
    except OSError:
        return None
    return main if same else None


def replayable_inputs(inputs: str | None) -> dict[str, Any] | None:
    """A recorded run's inputs as keyword arguments, or None when they cannot be replayed
    (missing, truncated, a redacted secret, not JSON, or not bound to names)."""
    if not inputs or _TRUNCATED in inputs or REDACTED in inputs:
        return None
    try:
        value = orjson.loads(inputs)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or set(value) == {"args", "kwargs"}:
        return None  # the flow's arguments could not be bound to names
    return value


_replayable = replayable_inputs  # the name the gate's tests know


def replayable_runs(
    wh: Warehouse,
    pipeline: str,
    param_set_id: str,
    kpi: str,
    exclude: Iterable[str] = (),
    limit: int = 1,
) -> list[tuple[str, dict[str, Any]]]:
    """Recent completed production runs with per-item ``kpi`` feedback of items on the
    stable arm of ``param_set_id`` (during a canary, a run's other items are on the
    candidate), whole inputs, and not in ``exclude``: ``[(run_id, inputs)]``, newest first."""
    rows = wh.sql(
        """
        SELECT r.run_id, r.inputs FROM runs r
        WHERE r.pipeline = ? AND r.arm IN ('stable', 'canary')
          AND r.status = 'completed' AND NOT list_contains(?, r.run_id)
          AND EXISTS (SELECT 1 FROM feedback f WHERE f.run_id = r.run_id AND f.kpi = ?
                      AND f.item_key IS NOT NULL AND f.value IS NOT NULL
                      AND f.arm = 'stable' AND f.param_set_id = ?)
        ORDER BY r.start_time DESC LIMIT 50
        """,
        [pipeline, list(exclude), kpi, param_set_id],
    )
    out = []
    for r in rows:
        inputs = replayable_inputs(r["inputs"])
        if inputs is not None:
            out.append((r["run_id"], inputs))
        if len(out) >= limit:
            break
    return out


def recorded_entrypoint(wh: Warehouse, pipeline: str) -> str | None:
    """The pipeline's latest recorded entrypoint (JSON text), or None."""
    entry = wh.sql(
        "SELECT entrypoint FROM pipelines WHERE pipeline = ? ORDER BY version DESC LIMIT 1",
        [pipeline],
    )
    return entry[0]["entrypoint"] if entry and entry[0]["entrypoint"] else None


#: set while :func:`replay_run` runs, in its context (and the task threads Prefect copies it to)
_replaying: contextvars.ContextVar[bool] = contextvars.ContextVar("genopt_replaying", default=False)


class _ReplayConsoleFilter(logging.Filter):
    """Drops a replayed run's INFO lines (and lower) from the console.

    A night replays the pipeline hundreds of times; each replay would print "Beginning
    subflow run ...", "View at ..." and a "Finished in state" line per task. The lines
    still reach Prefect's API (the run's logs in the UI): only the console handlers on the
    root logger get this filter, only while :func:`replay_run` runs, and it drops only the
    lines logged in the replay's own context, so another flow running in another thread
    of the process keeps its console lines.

    Example:
        >>> rec = logging.LogRecord("prefect.flow_runs", logging.INFO, "", 0, "x", None, None)
        >>> quiet = _ReplayConsoleFilter()
        >>> quiet.filter(rec)  # logged outside a replay
        True
        >>> token = _replaying.set(True)
        >>> quiet.filter(rec)
        False
        >>> rec.levelno = logging.WARNING
        >>> quiet.filter(rec)
        True
        >>> _replaying.reset(token)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not _replaying.get():
            return True
        return not record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    from prefect.logging.handlers import PrefectConsoleHandler  # loaded with prefect

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    quiet = _ReplayConsoleFilter()
    token = _replaying.set(True)
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)
        _replaying.reset(token)


def replay_run(
    flow: Any,
    inputs: dict[str, Any],
    values: dict[str, Any],
    tags: Sequence[str] = REPLAY_TAGS,
    reuse_recorded: bool = False,
) -> str:
    """Re-run one recorded run's ``inputs`` with ``values`` pinned on the ``replay`` arm;
    the replayed run's id. A failed run returns its state (not raised): its id still counts,
    and the items it did not score have no feedback. The flow run carries the Prefect
    ``tags`` (default :data:`REPLAY_TAGS`). With ``reuse_recorded``, recording steps whose
    inputs, version, params read and model are unchanged return their recorded output
    (:func:`~prefect_genopt.replay.steps.reuse_recorded_steps`)."""
    with (
        pinned_params(values, arm=ARM),
        prefect.tags(*tags),
        reuse_recorded_steps(reuse_recorded),
        _quiet_console(),
    ):
        state = flow(**inputs, return_state=True)
    return str(state.state_details.flow_run_id)


def llm_usage(wh: Warehouse, run_ids: Sequence[str]) -> dict[str, Any]:
    """LLM calls, tokens and USD (None where unpriced) of the runs ``run_ids``."""
    return wh.sql(
        "SELECT count(*) AS calls, sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) "
        "AS tokens, sum(cost_usd) AS cost_usd FROM spans "
        "WHERE run_type = 'llm' AND list_contains(?, run_id)",
        [list(run_ids)],
    )[0]


def item_values(
    wh: Warehouse, run_id: str, kpi: str, param_set_id: str | None = None
) -> dict[str, float]:
    """Per-item KPI of a run (only the items on ``param_set_id``'s stable arm, if given)."""
    only = " AND arm = 'stable' AND param_set_id = ?" if param_set_id else ""
    rows = wh.sql(
        "SELECT item_key, avg(value) AS v FROM feedback WHERE run_id = ? AND kpi = ? "
        f"AND item_key IS NOT NULL AND value IS NOT NULL{only} GROUP BY item_key",
        [run_id, kpi, *([param_set_id] if param_set_id else [])],
    )
    return {r["item_key"]: float(r["v"]) for r in rows}


_item_values = item_values  # the gate's own name


def night_scores(
    wh: Warehouse,
    proposal_id: str | None,
    candidate_param_set_id: str,
    kpi: str,
    code: str | None,
) -> tuple[str | None, dict[str, dict[str, float]]]:
    """The candidate's per-item confirmation scores from the night that made
    ``proposal_id``, when they may stand in for replays: ``(night id, {run id: {item key:
    score}})``. Empty unless the proposal has a night, its offline evidence recorded the
    fingerprint of the code it replayed, that fingerprint equals ``code`` (the code loaded
    now) and the scores are of ``candidate_param_set_id`` on ``kpi``."""
    if proposal_id is None or code is None:
        return None, {}
    rows = wh.sql(
        "SELECT night_id, offline_evidence FROM proposals WHERE proposal_id = ? LIMIT 1",
        [proposal_id],
    )
    if not rows or not rows[0]["night_id"] or not rows[0]["offline_evidence"]:
        return None, {}
    night = str(rows[0]["night_id"])
    raw = rows[0]["offline_evidence"]
    try:
        evidence = raw if isinstance(raw, dict) else orjson.loads(raw)
    except orjson.JSONDecodeError:
        return night, {}
    if not isinstance(evidence, dict) or evidence.get("fingerprint") != code:
        return night, {}
    out: dict[str, dict[str, float]] = {}
    for r in wh.sql(
        "SELECT run_id, item_key, score FROM candidate_scores WHERE night_id = ? "
        "AND candidate_id = ? AND kpi = ? AND pool = 'confirmation' AND score IS NOT NULL",
        [night, candidate_param_set_id, kpi],
    ):
        if math.isfinite(float(r["score"])):
            out.setdefault(r["run_id"], {})[r["item_key"]] = float(r["score"])
    return night, out


def replay_gate(
    pipeline: str,
    candidate_values: dict[str, Any],
    *,
    kpi: str,
    stable_param_set_id: str,
    candidate_param_set_id: str,
    direction: str = "higher",
    tolerance: float = 0.05,
    tolerance_mode: str = "relative",
    exclude_run_ids: Iterable[str] = (),
    runs: int = 1,
    proposal_id: str | None = None,
    warehouse: Warehouse | str | None = None,
    reuse_night_scores: bool = True,
) -> GateResult:
    """Replay ``runs`` recorded stable runs with the candidate and judge it; recorded in
    ``replay_gates`` whatever the outcome. Runs the proposal's night scored on its
    confirmation pool are not replayed again (see the module docstring).

    Args:
        pipeline: The pipeline.
        candidate_values: The candidate's full param values.
        kpi: The per-item KPI the pipeline's feedback scores.
        stable_param_set_id: The param set the recorded runs used.
        candidate_param_set_id: The candidate's id (for the record).
        direction: Whether higher or lower KPI values are better.
        tolerance: How much worse than stable the candidate may be.
        tolerance_mode: ``relative`` (to stable's mean) or ``absolute``.
        exclude_run_ids: Runs not to replay (the proposal's evidence).
        runs: Recorded runs to replay (each costs one pipeline run of LLM calls).
        proposal_id: The proposal gated, if any.
        warehouse: The warehouse (default: GENOPT_WAREHOUSE).
        reuse_night_scores: Use the proposal's night's confirmation scores where they
            cover a run (False: replay every run).
    """
    t0 = time.monotonic()
    wh = as_warehouse(warehouse)
    result: GateResult
    sources = replayable_runs(wh, pipeline, stable_param_set_id, kpi, exclude_run_ids, runs)
    entry = recorded_entrypoint(wh, pipeline)
    if not sources:
        result = GateResult(
            "skipped",
            f"no replayable run: no completed stable run of {stable_param_set_id} with per-item "
            f"{kpi!r} feedback and whole inputs outside the proposal's evidence",
        )
    elif entry is None:
        result = GateResult("skipped", f"no recorded entrypoint for {pipeline!r}")
    else:
        try:
            flow = load_entrypoint(entry)
        except Exception as exc:  # noqa: BLE001 - an entrypoint this process cannot import
            flow = None
            result = GateResult("skipped", f"cannot import the pipeline's entrypoint: {exc}")
        if flow is not None:
            night, reusable = (
                night_scores(wh, proposal_id, candidate_param_set_id, kpi, code_fingerprint(flow))
                if reuse_night_scores
                else (None, {})
            )
            result = _replay(
                wh,
                stable_param_set_id,
                flow,
                sources,
                candidate_values,
                kpi,
                direction,
                tolerance,
                tolerance_mode,
                reusable,
                (*GATE_TAGS, pipeline_tag(pipeline)),
            )
            if result.reused_run_ids:
                result.reason += (
                    f"; {len(result.reused_run_ids)} of {len(sources)} run(s) "
                    f"({result.reused_items} items) scored from night {night}'s confirmation, "
                    "not replayed"
                )
    result.seconds = time.monotonic() - t0
    _record(
        wh,
        result,
        pipeline,
        proposal_id,
        stable_param_set_id,
        candidate_param_set_id,
        kpi,
        direction,
    )
    logger.info("replay gate for %s: %s: %s", pipeline, result.outcome, result.reason)
    return result


def gate_proposal(
    pipeline: str,
    candidate_values: dict[str, Any],
    *,
    kpi: str,
    stable_param_set_id: str,
    candidate_param_set_id: str,
    proposal_id: str | None,
    actor: str,
    direction: str = "higher",
    tolerance: float = 0.05,
    tolerance_mode: str = "relative",
    exclude_run_ids: Iterable[str] = (),
    runs: int = 1,
    warehouse: Warehouse | str | None = None,
    reuse_night_scores: bool = True,
) -> GateResult:
    """:func:`replay_gate`, then its bookkeeping: a passed or stopped gate rates the
    proposal (retrospective memory), and a stopped one rejects it, with the numbers."""
    wh = as_warehouse(warehouse)
    g = replay_gate(
        pipeline,
        candidate_values,
        kpi=kpi,
        stable_param_set_id=stable_param_set_id,
        candidate_param_set_id=candidate_param_set_id,
        direction=direction,
        tolerance=tolerance,
        tolerance_mode=tolerance_mode,
        exclude_run_ids=exclude_run_ids,
        runs=runs,
        proposal_id=proposal_id,
        warehouse=wh,
        reuse_night_scores=reuse_night_scores,
    )
    if proposal_id is not None and g.outcome in ("passed", "stopped"):
        rate(
            wh,
            proposal_id,
            pipeline,
            "replay_gate",
            f"gate_{g.outcome}",
            kpi,
            direction,
            g.effect,
            g.relative_effect,
            g.n_items,
            g.n_items,
        )
    if g.stopped and proposal_id is not None:
        set_status(
            wh, proposal_id, "rejected", reason=f"replay gate {g.outcome}: {g.reason}", actor=actor
        )
    return g


def _replay(
    wh: Warehouse,
    stable_id: str,
    flow: Any,
    sources: list[tuple[str, dict[str, Any]]],
    values: dict[str, Any],
    kpi: str,
    direction: str,
    tolerance: float,
    tolerance_mode: str,
    reusable: dict[str, dict[str, float]] | None = None,
    tags: Sequence[str] = GATE_TAGS,
) -> GateResult:
    reusable = reusable or {}
    replayed: dict[str, str] = {}
    reused: list[str] = []
    for src, inputs in sources:
        have = reusable.get(src)
        if have and set(_item_values(wh, src, kpi, stable_id)) <= set(have):
            reused.append(src)  # the night scored every item: not replayed again
        else:
            replayed[src] = replay_run(flow, inputs, values, tags=tags)
    wh = Warehouse(wh.path)  # a fresh reader loads the replayed runs
    stable_v: list[float] = []
    cand_v: list[float] = []
    n_reused = 0
    for src, _ in sources:
        before = _item_values(wh, src, kpi, stable_id)
        after = _item_values(wh, replayed[src], kpi) if src in replayed else reusable[src]
        for key in sorted(set(before) & set(after)):
            stable_v.append(before[key])
            cand_v.append(after[key])
            n_reused += src not in replayed
    result = judge(stable_v, cand_v, direction, tolerance, tolerance_mode)
    replay_ids = list(replayed.values())
    usage = llm_usage(wh, replay_ids)
    result.source_run_ids = [s for s, _ in sources]
    result.replay_run_ids = replay_ids
    result.reused_run_ids = reused
    result.reused_items = n_reused
    result.llm_calls = int(usage["calls"] or 0)
    result.llm_tokens = int(usage["tokens"] or 0)
    return result


def _record(
    wh: Warehouse,
    r: GateResult,
    pipeline: str,
    proposal_id: str | None,
    stable: str,
    candidate: str,
    kpi: str,
    direction: str,
) -> None:
    spool.append(
        [
            row_record(
                "replay_gates",
                {
                    "gate_id": r.gate_id,
                    "pipeline": pipeline,
                    "created_at": utcnow().isoformat(),
                    "proposal_id": proposal_id,
                    "stable_param_set_id": stable,
                    "candidate_param_set_id": candidate,
                    "kpi": kpi,
                    "direction": direction,
                    "outcome": r.outcome,
                    "reason": clean(r.reason, 4000),
                    "n_items": r.n_items,
                    "stable_mean": r.stable_mean,
                    "candidate_mean": r.candidate_mean,
                    "effect": r.effect,
                    "relative_effect": r.relative_effect,
                    "margin": r.margin,
                    "source_run_ids": r.source_run_ids,
                    "replay_run_ids": r.replay_run_ids,
                    "llm_calls": r.llm_calls,
                    "llm_tokens": r.llm_tokens,
                    "seconds": round(r.seconds, 3),
                },
            )
        ],
        wh.spool_dir,
    )
    wh.ingest_if_free()
