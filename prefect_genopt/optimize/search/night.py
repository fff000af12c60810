"""One night of the search, end to end: pools -> evidence -> drafts -> selection ->
confirmation -> a ``proposed`` or ``not_better`` proposal, every score in SQL.

:func:`run_night` is what :func:`prefect_genopt.optimize.optimize` runs when
``OptimizerSettings.search`` is on (the default):

1. **Pools.** The newest ``pool_runs`` recorded runs with per-item feedback and
   replayable inputs (:func:`~.pools.pool_runs`) are split into three disjoint pools of
   whole runs (:func:`~.pools.assign_pools`): evidence (what the optimizer reads, where
   demos come from), selection and confirmation. With too few items to confirm anything
   (:func:`~.stats.min_confirmation_items`) the night proposes nothing and says how many
   more labelled items it needs (:func:`~.pools.needed_items`).
2. **Evidence** from the evidence pool only (:func:`~prefect_genopt.optimize.evidence.collect`
   with ``evidence_run_ids``), and **the step to tune tonight**: the one step credit
   blames (:mod:`~prefect_genopt.optimize.step_credit`), else the one step that reads the
   editable params; its editable params are tonight's.
3. **Candidates** from the generators (instruction drafts, the answer format, demo sets,
   the OptoPrime update: :mod:`~.generators`), through the cheap filters (:mod:`~.filters`); every
   dropped draft is counted with its reason.
4. **Selection** by successive halving (:mod:`~.halving`) on the selection items in a
   seeded order, the parent first (its score is the baseline: a candidate must beat it),
   scored by replay (:class:`~.evaluate.ReplayEvaluator`; the steps upstream of
   tonight's, whose params a candidate does not change, return their recorded outputs
   instead of running: ``reuse_recorded_steps``). Then the best instruction candidate (of
   :data:`INSTRUCTION_GENERATORS`) combined with the best demo set
   (:class:`~.generators.Combination`), scored on all the selection items, replaces the
   winner when it beats it.
5. **Confirmation**: the winner and the parent on the confirmation items; the exact
   one-sided sign test (:func:`~.stats.sign_test`) with ``p < confirm_alpha`` makes a
   ``proposed`` proposal (:func:`~prefect_genopt.proposals.proposals.record_proposal`: its
   offline evidence, lineage, cost); otherwise the night is a ``not_better`` proposals row
   with its numbers, and nothing becomes live.

Every per-item score goes to ``candidate_scores`` (night, proposal, candidate, item,
pool, score, source). Progress lines (the stage, the candidate, items done, an ETA) go to
``progress``: stderr in the CLI, the flow's logger in the flow. Each budget
(``task_call_budget``, ``optimizer_call_budget``, ``budget_usd``) stops the night
cleanly: what was measured is recorded, with the reason.

Example:
    >>> NightResult(stop_reason="too few labelled items", needed_items=12).summary()
    'night : no proposal; 0 task-model and 0 optimizer call(s); stopped: too few labelled items'
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from prefect_genopt import spool
from prefect_genopt.optimize.config import OptimizerSettings
from prefect_genopt.optimize.evidence import (
    Evidence,
    EvidenceError,
    _choose_kpi,
    _pipeline_info,
    collect,
    fresh_warehouse,
)
from prefect_genopt.optimize.instruction import current_instruction
from prefect_genopt.optimize.llm import LLMClient
from prefect_genopt.optimize.memory import memory
from prefect_genopt.optimize.optoprime import Optimizer, OptoPrime
from prefect_genopt.optimize.runner import OptimizeResult, UpdateOutcome
from prefect_genopt.optimize.search.core import (
    Budget,
    Candidate,
    Dropped,
    HistoryEntry,
    Pools,
    ProgressLine,
    RunInfo,
    Scores,
    eta_text,
    split_item_id,
)
from prefect_genopt.optimize.search.evaluate import (
    RESERVE_NOTE,
    ReplayEvaluator,
    ScoreCache,
    score_cache_path,
    task_budget_spent,
)
from prefect_genopt.optimize.search.filters import filter_drafts
from prefect_genopt.optimize.search.generators import (
    CandidateGenerator,
    Combination,
    GenerationContext,
    GeneratorOutput,
    answer_distribution,
    default_generators,
    evidence_demo_pools,
    examples_from_evidence,
)
from prefect_genopt.optimize.search.halving import HalvingResult, rank, successive_halving
from prefect_genopt.optimize.search.pools import assign_pools, needed_items, pool_runs
from prefect_genopt.optimize.search.stats import SignTest, min_confirmation_items, sign_test
from prefect_genopt.optimize.step_credit import Credit, assign, credit_rows, focus, task_steps
from prefect_genopt.optimize.validate import editable_fields
from prefect_genopt.proposals.proposals import new_proposal_id, record_proposal
from prefect_genopt.records import row_record
from prefect_genopt.replay.gate import load_entrypoint, recorded_entrypoint
from prefect_genopt.rollout.stable import stable_param_set
from prefect_genopt.tracing import tracer
from prefect_genopt.tunables import KIND_KEY, param_set_id
from prefect_genopt.warehouse import Warehouse, WarehouseBusyError
from prefect_genopt.warehouse.param_sets import param_set_values
from prefect_genopt.warehouse.schema import utcnow

__all__ = ["run_night", "NightResult", "new_night_id", "OPTIMIZER_NAME", "FIRST_RUNG"]

logger = logging.getLogger("prefect_genopt.optimize.search")

#: the ``optimizer`` column of a night's proposal row
OPTIMIZER_NAME = "search"
#: the first rung of successive halving: every candidate on this many items, keep 4
FIRST_RUNG = (16, 4)
#: most distinct expected answers for them to count as a parsed step's answer words
MAX_ANSWER_WORDS = 12
#: most scored past values shown to the drafts (OPRO's history)
HISTORY_SIZE = 20
#: the generators whose best candidate the combination joins with the best demo set
INSTRUCTION_GENERATORS = ("drafts", "format")


def new_night_id() -> str:
    """A fresh, time-ordered night id (``night_YYYYmmddHHMMSS_xxxxxx``)."""
    return f"night_{utcnow():%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"


@dataclass
class NightResult(OptimizeResult):
    """What one night did: an :class:`~prefect_genopt.optimize.runner.OptimizeResult`
    (whose one update is the night's ``proposed`` or ``not_better`` proposal, none when
    there were too few items) with the search's numbers."""

    night_id: str = ""
    #: ``proposed``, ``not_better`` or ``no_proposal`` (too few items, no evidence)
    status: str = "no_proposal"
    proposal_id: str | None = None
    #: labelled items still to record before a night can confirm anything (0: enough)
    needed_items: int = 0
    step: str | None = None
    editable: list[str] = field(default_factory=list)
    pools: dict[str, tuple[int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    selection: HalvingResult | None = None
    winner: Candidate | None = None
    confirmation: SignTest | None = None
    offline_evidence: dict[str, Any] | None = None
    task_calls: int = 0
    optimizer_calls: int = 0

    def summary(self) -> str:
        """One line: the outcome, the calls spent, why the night stopped."""
        if self.status == "proposed":
            what = f"proposed {self.proposal_id}"
        elif self.status == "not_better":
            what = f"not_better ({self.proposal_id})"
        else:
            what = "no proposal"
        return (
            f"night {self.night_id}: {what}; {self.task_calls} task-model and "
            f"{self.optimizer_calls} optimizer call(s); stopped: {self.stop_reason}"
        )


@dataclass
class _Night:
    """The state one night shares between its stages."""

    settings: OptimizerSettings
    wh: Warehouse
    say: Callable[[str], None]
    result: NightResult
    budget: Budget
    night_id: str
    rng: random.Random
    pipeline: str = ""
    kpi: str = ""
    parent: Candidate | None = None
    schema_version: int | None = None
    pools: Pools = field(default_factory=Pools)
    runs: dict[str, RunInfo] = field(default_factory=dict)
    evidence: Evidence | None = None
    credits: list[Credit] = field(default_factory=list)
    outputs: list[GeneratorOutput] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    evaluator: ReplayEvaluator | None = None
    selection_items: list[str] = field(default_factory=list)
    confirmation_items: list[str] = field(default_factory=list)
    tokens: int = 0
    optimizer_usd: float | None = None
    trace_id: str = ""
    #: the stage the evaluator scores for (progress lines), and the items the stage
    #: still scores after the current candidate's (its ETA counts them)
    stage: str = "selection"
    stage_after: int = 0

    @property
    def direction(self) -> str:
        return self.settings.direction


def run_night(
    settings: OptimizerSettings,
    *,
    warehouse: str | Path | Warehouse | None = None,
    client: LLMClient | None = None,
    progress: Callable[[str], None] | None = None,
    optimizer: Optimizer | None = None,
    optimizer_run_id: str | None = None,
    generators: Sequence[CandidateGenerator] | None = None,
    cache: ScoreCache | None = None,
) -> NightResult:
    """Run one night of the search for ``settings.pipeline`` (see the module docstring).

    Args:
        settings: What to optimize and how (the search's fields: pool sizes, drafts, demo
            sets, ``confirm_alpha``, the budgets).
        warehouse: The warehouse (default: the configured one).
        client: The optimizer model's client (default: ``LLMClient.configured`` from
            ``settings``).
        progress: Called with one line per step (default: the module logger).
        optimizer: The OptoPrime generator's optimizer (default: OptoPrime with the
            pipeline's tuned optimizer instruction, if any).
        optimizer_run_id: Recorded with the proposal (the flow run id in the flow).
        generators: The candidate generators (default:
            :func:`~.generators.default_generators` of the settings).
        cache: The score cache (default: ``<warehouse>.scores.sqlite``).

    Raises:
        EvidenceError: Unknown pipeline, no param set, no feedback.
    """
    t0 = time.perf_counter()
    say = progress or logger.info
    wh = fresh_warehouse(warehouse, say)
    night = _Night(
        settings=settings,
        wh=wh,
        say=say,
        result=NightResult(),
        budget=Budget(
            task_calls=settings.task_call_budget,
            optimizer_calls=settings.optimizer_call_budget,
            usd=settings.budget_usd,
        ),
        night_id=new_night_id(),
        rng=random.Random(settings.seed),
    )
    result = night.result
    result.night_id = night.night_id
    attrs = {"genopt.optimizer.pipeline": settings.pipeline, "genopt.night.id": night.night_id}
    with tracer().start_as_current_span("genopt.optimize.night", attributes=attrs) as root:
        night.trace_id = format(root.get_span_context().trace_id, "032x")
        try:
            _run(night, client, optimizer, optimizer_run_id, generators, cache)
        finally:
            result.task_calls = night.budget.used_task_calls
            result.optimizer_calls = night.budget.used_optimizer_calls
            result.llm_calls = night.budget.used_optimizer_calls
            result.tokens = night.tokens
            result.cost_usd = night.budget.used_usd if night.budget.used_usd else None
            result.seconds = time.perf_counter() - t0
            root.set_attribute("genopt.optimizer.stop_reason", result.stop_reason or "error")
    try:
        wh.ingest()
    except WarehouseBusyError as exc:
        say(f"the night's rows wait in the spool (warehouse busy): {exc}")
    say(result.summary())
    return result


def _run(
    night: _Night,
    client: LLMClient | None,
    optimizer: Optimizer | None,
    optimizer_run_id: str | None,
    generators: Sequence[CandidateGenerator] | None,
    cache: ScoreCache | None,
) -> None:
    s, result, say = night.settings, night.result, night.say
    if client is None:
        client = LLMClient.for_settings(s)
    result.model = client.model
    _parent_and_kpi(night)
    say(
        f"night {night.night_id} for {night.pipeline!r}: KPI {night.kpi!r} ({s.direction} is "
        f"better), parent {night.parent.candidate_id if night.parent else '?'}"
    )
    if not _pools(night):
        return
    flow = _flow(night)
    if flow is None:
        return
    _evidence_and_step(night)
    if optimizer is None:
        _, text = current_instruction(night.wh, night.pipeline)
        optimizer = OptoPrime(instruction=text)
    ctx = _context(night, client)
    candidates = _generate(night, ctx, generators or _default_generators(s, optimizer))
    night.evaluator = ReplayEvaluator(
        night.wh,
        pipeline=night.pipeline,
        kpi=night.kpi,
        flow=flow,
        runs=_pool_infos(night),
        direction=s.direction,
        budget=night.budget,
        cache=cache if cache is not None else ScoreCache(score_cache_path(night.wh.path)),
        on_progress=_progress(night),
        reuse_recorded=s.reuse_recorded_steps,
    )
    ev = night.evaluator
    night.selection_items = _seeded(night, ev.items_of(night.pools.selection))
    night.confirmation_items = _seeded(night, ev.items_of(night.pools.confirmation))
    winner = _select(night, ctx, candidates)
    proposal_id = new_proposal_id()
    confirmed = _confirm(night, winner) if winner is not None else None
    _record(night, proposal_id, winner, confirmed, optimizer_run_id, client)


# -- stages ----------------------------------------------------------------------------


def _parent_and_kpi(night: _Night) -> None:
    s, wh = night.settings, night.wh
    info = _pipeline_info(wh, s.pipeline)
    night.pipeline, night.schema_version = s.pipeline, info.schema_version
    since = utcnow() - timedelta(days=s.window_days)
    night.kpi = s.kpi or _choose_kpi(wh, s.pipeline, since)
    parent_id = stable_param_set(wh, s.pipeline, any_arm=True)
    if parent_id is None:
        raise EvidenceError(f"pipeline {s.pipeline!r} has no run with a param set yet")
    values = param_set_values(wh, s.pipeline, parent_id)
    if values is None:
        raise EvidenceError(f"param set {parent_id} of {s.pipeline!r} is not in the warehouse")
    start = s.starting_artifact
    if start.start_from == "values":
        values = {**values, **(start.values or {})}
        parent_id = param_set_id(values)
    night.parent = Candidate(parent_id, values, "parent", parent_id)
    night.result.editable = editable_fields(info.schema, start.editable)


def _pools(night: _Night) -> bool:
    """Split the runs into pools; False (the result says why) when too few items."""
    s, result = night.settings, night.result
    runs = pool_runs(night.wh, night.pipeline, night.kpi, limit=s.pool_runs)
    night.pools = pools = assign_pools(
        runs,
        pipeline=night.pipeline,
        evidence=s.evidence_items,
        selection=s.selection_items,
        confirmation=s.confirmation_items,
    )
    night.runs = {r.run_id: r for r in runs}
    result.pools = dict(pools.sizes)
    result.notes += pools.notes
    night.say(
        f"pools from {len(runs)} run(s): "
        + ", ".join(
            f"{name} {got}/{wanted} items in {len(getattr(pools, name))} run(s)"
            for name, (wanted, got) in pools.sizes.items()
        )
    )
    for note in pools.notes:
        night.say(f"  {note}")
    minimum = min_confirmation_items(s.confirm_alpha)
    need = needed_items(pools, minimum)
    short = [n for n in ("evidence", "selection") if not getattr(pools, n)]
    if not runs:
        result.notes.append(
            f"no recorded run of {night.pipeline!r} has per-item {night.kpi!r} feedback "
            "(genopt.feedback(..., item_key=...)) and whole, replayable inputs"
        )
        night.say(f"  {result.notes[-1]}")
    if need or short:
        extra = [f"the {n} pool is empty" for n in short]
        if need:
            extra.insert(
                0,
                f"the confirmation pool has {pools.n_items('confirmation')} labelled items, "
                f"fewer than the {minimum} a sign test at alpha {s.confirm_alpha:g} needs",
            )
        result.needed_items = max(need, 1 if short else 0)
        result.stop_reason = (
            "too few labelled items to confirm anything (" + "; ".join(extra) + "): record "
            f"about {result.needed_items} more labelled item(s) of {night.pipeline!r}; no "
            "proposal"
        )
        night.say(result.stop_reason)
        return False
    return True


def _flow(night: _Night) -> Any:
    """The pipeline's flow from its recorded entrypoint (None: the result says why)."""
    entry = recorded_entrypoint(night.wh, night.pipeline)
    why = None
    flow = None
    if entry is None:
        why = f"no recorded entrypoint for {night.pipeline!r}"
    else:
        try:
            flow = load_entrypoint(entry)
        except Exception as exc:  # noqa: BLE001 - an entrypoint this process cannot import
            why = f"cannot import the pipeline's entrypoint: {exc}"
    if why:
        night.result.stop_reason = f"nothing can be replayed ({why}); no proposal"
        night.say(night.result.stop_reason)
    return flow


def _evidence_and_step(night: _Night) -> None:
    s, wh, result = night.settings, night.wh, night.result
    assert night.parent is not None
    ev_settings = s.model_copy(update={"evidence_run_ids": list(night.pools.evidence)})
    ev_settings = ev_settings.model_copy(update={"kpi": night.kpi})
    night.evidence = ev = collect(wh, ev_settings, night.parent.values, night.parent.candidate_id)
    ev.parent_param_set_id = night.parent.candidate_id
    editable = result.editable
    night.credits = assign(wh, ev, ev.units)
    picked = focus(night.credits, editable)
    if picked is not None:
        step, params = picked
        how = f"step credit blames it for {sum(c.step == step for c in night.credits)} unit(s)"
    else:
        step, params, how = _only_step(ev, editable)
    demos = [
        n
        for n in editable
        if ev.pipeline.schema.get("properties", {}).get(n, {}).get(KIND_KEY) == "demos"
        and ev.pipeline.schema["properties"][n].get("genopt_step") == step
    ]
    result.step = step
    result.editable = sorted(set(params) | set(demos)) if step else list(editable)
    result.evidence_units = ev.population_units
    night.say(
        f"evidence: {ev.population_units} item(s) of {ev.population_runs} run(s), KPI mean "
        f"{ev.population_mean:.3g}; tonight's step: "
        + (f"{step!r} ({how}), params {', '.join(result.editable)}" if step else how)
    )


def _only_step(ev: Evidence, editable: list[str]) -> tuple[str | None, list[str], str]:
    """The one task step reading editable params, when exactly one does."""
    readers: dict[str, set[str]] = {}
    for u in ev.units:
        for s in task_steps(u):
            read = set(s.params_read or {}) & set(editable)
            if read:
                readers.setdefault(s.name, set()).update(read)
    if len(readers) == 1:
        ((step, params),) = readers.items()
        return step, sorted(params), "the only step that reads editable params"
    return None, list(editable), "no one step to blame: every editable param"


def _answer_words(night: _Night) -> list[str] | None:
    """The expected answers of the evidence pool when they are a few short labels."""
    rows = night.wh.sql(
        "SELECT DISTINCT expected FROM feedback WHERE list_contains(?, run_id) AND kpi = ? "
        "AND expected IS NOT NULL LIMIT ?",
        [list(night.pools.evidence), night.kpi, MAX_ANSWER_WORDS + 1],
    )
    words = []
    for r in rows:
        try:
            value = orjson.loads(r["expected"])
        except orjson.JSONDecodeError:
            value = r["expected"]
        if not isinstance(value, str) or len(value.split()) > 3:
            return None
        words.append(value.strip())
    return sorted(set(words)) if 0 < len(words) <= MAX_ANSWER_WORDS else None


def _history(night: _Night, fields: Sequence[str]) -> list[HistoryEntry]:
    """Past candidates of the pipeline with their selection scores (earlier nights)."""
    rows = night.wh.sql(
        """
        SELECT c.candidate_id, avg(c.score) AS score, count(*) AS n, any_value(p."values") AS v
        FROM candidate_scores c JOIN param_sets p
          ON p.pipeline = c.pipeline AND p.param_set_id = c.candidate_id
        WHERE c.pipeline = ? AND c.pool = 'selection' AND c.kpi = ?
        GROUP BY c.candidate_id ORDER BY max(c.created_at) DESC LIMIT ?
        """,
        [night.pipeline, night.kpi, HISTORY_SIZE],
    )
    out = []
    for r in rows:
        values = orjson.loads(r["v"]) if r["v"] else {}
        for name in fields:
            if isinstance(values.get(name), str):
                out.append(
                    HistoryEntry(
                        values[name], float(r["score"]), int(r["n"]), r["candidate_id"], name
                    )
                )
    return out


def _context(night: _Night, client: LLMClient) -> GenerationContext:
    s, ev, result = night.settings, night.evidence, night.result
    assert ev is not None and night.parent is not None
    step = result.step
    examples = examples_from_evidence(night.wh, ev, step=step)
    order = sorted(range(len(examples)), key=lambda i: (examples[i].passed, i))
    examples = [examples[i] for i in order]  # worst first
    answered = [e.output for e in examples]
    expected = [e.expected for e in examples if e.expected is not None]
    prompts = [
        n for n in result.editable if ev.pipeline.schema["properties"][n].get(KIND_KEY) == "prompt"
    ]
    return GenerationContext(
        pipeline=night.pipeline,
        parent_id=night.parent.candidate_id,
        parent=dict(night.parent.values),
        schema=ev.pipeline.schema,
        editable=list(result.editable),
        step=step,
        direction=s.direction,
        examples=examples,
        distribution=answer_distribution(answered, expected) if answered else "",
        history=_history(night, prompts),
        demo_pools=evidence_demo_pools(
            night.wh, night.pipeline, ev.pipeline.schema, result.editable, night.pools.evidence
        ),
        answer_words=_answer_words(night),
        client=client,
        rng=night.rng,
        budget=night.budget,
        progress=night.say,
        evidence=ev,
        batch=list(ev.minibatches[0]) if ev.minibatches else list(ev.units),
        memory=memory(night.wh, night.pipeline, s.memory_size),
        settings=s,
        credits=night.credits or None,
    )


def _default_generators(s: OptimizerSettings, optimizer: Optimizer) -> list[CandidateGenerator]:
    return default_generators(
        n_drafts=s.n_drafts,
        draft_temperature=s.draft_temperature,
        n_demo_sets=s.n_demo_sets,
        optimizer=optimizer,
    )


def _generate(
    night: _Night, ctx: GenerationContext, generators: Sequence[CandidateGenerator]
) -> list[Candidate]:
    """Every generator's candidates, through the cheap filters (drops counted)."""
    made: list[Candidate] = []
    for gen in generators:
        night.say(f"generating: {gen.name}")
        out = gen.generate(ctx)
        night.outputs.append(out)
        night.tokens += out.tokens
        if out.usd is not None:
            night.optimizer_usd = (night.optimizer_usd or 0.0) + out.usd
        night.dropped += out.dropped
        made += out.candidates
        for note in out.notes:
            night.say(f"  {note}")
        if out.stop_reason:
            night.say(f"  {gen.name} stopped: {out.stop_reason}")
            night.result.notes.append(f"{gen.name} stopped: {out.stop_reason}")
    prompts = [n for n in ctx.editable if ctx.spec(n).get(KIND_KEY) == "prompt"]
    kept = made
    for name in prompts:
        kept, dropped = filter_drafts(
            kept,
            parent=ctx.parent,
            history=ctx.history,
            evidence_inputs=[e.input for e in ctx.examples],
            answer_words=ctx.answer_words,
            field=name,
        )
        night.dropped += dropped
    unique: dict[str, Candidate] = {}
    for c in kept:
        if c.candidate_id == ctx.parent_id:
            night.dropped.append(Dropped(c.generator, "copy", "the parent's values", None))
        elif c.candidate_id in unique:
            night.dropped.append(Dropped(c.generator, "copy", "a candidate kept before it", None))
        else:
            unique[c.candidate_id] = c
    counts = Counter(d.reason for d in night.dropped)
    night.result.dropped = dict(counts)
    night.result.candidates = list(unique.values())
    night.say(
        f"candidates: {len(unique)} kept ("
        + ", ".join(f"{g} {n}" for g, n in Counter(c.generator for c in unique.values()).items())
        + f"); dropped {sum(counts.values())}"
        + (f" ({', '.join(f'{r} {n}' for r, n in sorted(counts.items()))})" if counts else "")
    )
    return list(unique.values())


def _seeded(night: _Night, items: list[str]) -> list[str]:
    out = sorted(items)
    random.Random(f"{night.settings.seed}:{night.pipeline}").shuffle(out)
    return out


def _rungs(n: int) -> tuple[tuple[int, int], ...]:
    first, keep = FIRST_RUNG
    return ((first, keep), (n, 1)) if n > first else ((n, 1),)


def _select(night: _Night, ctx: GenerationContext, candidates: list[Candidate]) -> Candidate | None:
    """The selection's winner (the parent when nothing beats it; None: nothing scored)."""
    ev, parent, items = night.evaluator, night.parent, night.selection_items
    assert ev is not None and parent is not None
    if not candidates:
        night.result.stop_reason = "no candidate survived the generators and the filters"
        night.say(night.result.stop_reason)
        return parent
    night.say(
        f"selection: {len(candidates)} candidate(s) and the parent on {len(items)} items, "
        f"rungs {_rungs(len(items))}"
    )

    def should_stop() -> str | None:
        return ev.stop_reason or task_budget_spent(night.budget)

    reserve = _confirmation_reserve(night)
    if reserve:
        ev.reserve(reserve)
        night.say(f"selection keeps the task calls of {reserve} confirmation item(s)")
    halving = successive_halving(
        [parent, *candidates],
        items,
        ev.score,
        rungs=_rungs(len(items)),
        direction=night.direction,
        progress=night.say,
        should_stop=should_stop,
        failure=ev.failure,
    )
    night.result.selection = halving
    winner = halving.winner
    stopped = halving.stop_reason or ev.stop_reason  # the evaluator may stop mid-candidate
    if stopped and stopped.endswith(RESERVE_NOTE):
        night.result.notes.append(f"selection stopped early: {stopped}")
        night.say(night.result.notes[-1])
    elif stopped:
        night.result.stop_reason = f"selection stopped: {stopped}"
    # the combination of the best instruction candidate (a draft or the answer format,
    # whichever placed better) with the best demo set, on every selection item
    best = _best_by_generator(halving, [parent, *candidates])
    instruction = next((g for g in best if g in INSTRUCTION_GENERATORS), None)
    if winner is not None and not stopped and instruction and "demos" in best:
        ctx.best = {g: c for g, (_, c) in best.items()}
        out = Combination((instruction, "demos")).generate(ctx)
        night.dropped += out.dropped
        for note in out.notes:
            night.say(f"  {note}")
        for comb in out.candidates:
            if comb.candidate_id in (c.candidate_id for c in [parent, *candidates]):
                continue
            night.result.candidates.append(comb)
            night.say(f"combination {comb.candidate_id}: scoring on {len(items)} items")
            night.stage = "combination"
            scores = {winner.candidate_id: ev.score(winner, items), comb.candidate_id: {}}
            scores[comb.candidate_id] = ev.score(comb, items)
            ranked = rank(
                [winner, comb], scores, items, direction=night.direction, failure=ev.failure
            )
            if ranked[0][0] is comb:
                winner = comb
            halving.scores[comb.candidate_id] = scores[comb.candidate_id]
            night.say(
                f"combination mean {ranked[[r[0] for r in ranked].index(comb)][1]:.3g}: "
                + ("the new winner" if winner is comb else f"{winner.generator} stays the winner")
            )
    ev.reserve(0)  # the confirmation may spend them now
    night.result.winner = winner
    return winner


def _confirmation_reserve(night: _Night) -> int:
    """The replays the confirmation will need: the winner on every confirmation item, and
    the parent on those its recorded runs do not score (0 when the budget is unlimited).

    The selection leaves their task calls unspent (at the calls per item it measures),
    so a tight budget shortens the selection, not the paired test. A budget too small to
    keep them and still score one candidate on the first rung keeps nothing back.
    """
    ev, parent = night.evaluator, night.parent
    assert ev is not None and parent is not None
    left = night.budget.task_calls_left()
    if left is None:
        return 0
    recorded = {
        r.run_id
        for r in ev.runs.values()
        if r.param_set_id == parent.candidate_id and r.fingerprint == ev.fingerprint
    }
    items = night.confirmation_items
    parent_replays = sum(1 for i in items if split_item_id(i)[0] not in recorded)
    need = len(items) + (parent_replays if ev.fingerprint is not None else len(items))
    if left - need < FIRST_RUNG[0]:
        night.say(
            f"the task-call budget ({left} left) cannot keep the confirmation's ~{need} "
            "replays and still score a candidate on the first rung: nothing is kept back"
        )
        return 0
    return need


def _best_by_generator(
    halving: HalvingResult, cands: list[Candidate]
) -> dict[str, tuple[tuple[int, int], Candidate]]:
    """Each generator's best candidate: the one that reached the furthest rung at the best
    place, with that (rung, place) key; the generators in the order of their best."""
    by_id = {c.candidate_id: c for c in cands}
    best: dict[str, tuple[tuple[int, int], Candidate]] = {}
    for row in halving.table:
        c = by_id.get(row.candidate_id)
        if c is None:
            continue
        key = (-row.rung, row.place)
        if c.generator not in best or key < best[c.generator][0]:
            best[c.generator] = (key, c)
    return dict(sorted(best.items(), key=lambda kv: kv[1][0]))


def _confirm(night: _Night, winner: Candidate) -> SignTest | None:
    """The winner against the parent on the confirmation items (None: not run)."""
    ev, parent, result = night.evaluator, night.parent, night.result
    assert ev is not None and parent is not None
    if winner.candidate_id == parent.candidate_id:
        if not result.stop_reason:
            result.stop_reason = "no candidate beat the parent on the selection items"
        night.say(result.stop_reason)
        return None
    spent = ev.stop_reason or task_budget_spent(night.budget)
    if spent:
        result.stop_reason = f"the budget ran out before the confirmation: {spent}"
        night.say(result.stop_reason)
        return None
    items = night.confirmation_items
    night.say(
        f"confirmation: {winner.candidate_id} ({winner.generator}) against the parent on "
        f"{len(items)} items"
    )
    night.stage, night.stage_after = "confirmation", len(items)  # the winner's come next
    parent_scores = ev.score(parent, items)
    night.stage_after = 0
    cand_scores = ev.score(winner, items)
    test = sign_test(parent_scores, cand_scores, direction=night.direction)
    result.confirmation = test
    if ev.stop_reason:
        result.stop_reason = (
            f"confirmation cut short by the budget ({ev.stop_reason}): tested on {test.n_items} "
            f"of {len(items)} items"
        )
    night.say(f"confirmation: {test.summary()}")
    return test


# -- the record -----------------------------------------------------------------------------


def _mean(scores: Scores, items: Sequence[str]) -> float | None:
    values = [scores[i] for i in items if i in scores and math.isfinite(scores[i])]
    return math.fsum(values) / len(values) if values else None


def _offline_evidence(night: _Night, winner: Candidate | None, test: SignTest | None) -> dict:
    s, ev, result, parent = night.settings, night.evaluator, night.result, night.parent
    assert ev is not None and parent is not None
    sel = night.selection_items
    p_sel = ev.scores.get(parent.candidate_id, {})
    w_sel = ev.scores.get(winner.candidate_id, {}) if winner is not None else {}
    scored_sel = [i for i in sel if i in p_sel and i in w_sel]
    conf: dict[str, Any] = {}
    if test is not None and winner is not None:
        items = night.confirmation_items
        both = [
            i
            for i in items
            if i in ev.scores.get(parent.candidate_id, {}) and i in ev.scores[winner.candidate_id]
        ]
        conf = {
            "n": test.n_items,
            "items_asked": len(items),
            "parent_mean": _mean(ev.scores[parent.candidate_id], both),
            "candidate_mean": _mean(ev.scores[winner.candidate_id], both),
            "wins": test.wins,
            "losses": test.losses,
            "ties": test.ties,
            "p_value": test.p_value,
            "alpha": s.confirm_alpha,
            "accepted": test.accepted(s.confirm_alpha),
            "diff_mean": test.diff_mean,
            "ci_low": test.ci_low if math.isfinite(test.ci_low) else None,
            "ci_high": test.ci_high if math.isfinite(test.ci_high) else None,
            "ci_method": test.ci_method,
        }
    halving = result.selection
    table = halving.table if halving is not None else []
    cands = []
    for c in [parent, *result.candidates]:
        rows = [r for r in table if r.candidate_id == c.candidate_id]
        got = ev.scores.get(c.candidate_id, {})
        cands.append(
            {
                "candidate_id": c.candidate_id,
                "generator": c.generator,
                "changed": list(c.changed),
                "selection_score": _mean(got, sel),
                "n_items": sum(1 for i in sel if i in got),
                "rung": max((r.rung for r in rows), default=0),
                "sources": ev.source_counts(c.candidate_id),
            }
        )
    pools = night.pools
    return {
        "night_id": night.night_id,
        "kpi": night.kpi,
        "direction": s.direction,
        "step": result.step,
        "editable": result.editable,
        "winner": {
            "candidate_id": winner.candidate_id,
            "generator": winner.generator,
            "changed": list(winner.changed),
        }
        if winner is not None
        else None,
        "selection": {
            "n": len(scored_sel),
            "parent_mean": _mean(p_sel, scored_sel),
            "winner_mean": _mean(w_sel, scored_sel),
            "items": len(sel),
            "stop_reason": halving.stop_reason if halving is not None else None,
        },
        "confirmation": conf,
        "candidates": cands,
        "dropped": dict(Counter(d.reason for d in night.dropped)),
        "dropped_by_generator": {
            f"{g}:{r}": n
            for (g, r), n in Counter((d.generator, d.reason) for d in night.dropped).items()
        },
        "budgets": {
            "task_calls": night.budget.used_task_calls,
            "task_call_budget": s.task_call_budget,
            "cached_task_calls": ev.calls_cached,
            "optimizer_calls": night.budget.used_optimizer_calls,
            "optimizer_call_budget": s.optimizer_call_budget,
            "optimizer_tokens": night.tokens,
            "usd": night.budget.used_usd,
            "usd_budget": s.budget_usd,
        },
        "pools": {
            name: {"wanted": wanted, "got": got, "runs": len(getattr(pools, name))}
            for name, (wanted, got) in pools.sizes.items()
        },
        "skipped_items": sum(len(v) for v in ev.skipped.values()),
        # the step versions and task models the scores were measured with: the replay
        # gate reuses the confirmation's scores only for the same code
        "fingerprint": ev.fingerprint,
        "stop_reason": result.stop_reason or None,
        "replays": sum(len(v) for v in ev.replays.values()),
        "seconds_replaying": round(ev.seconds, 3),
    }


def _record(
    night: _Night,
    proposal_id: str,
    winner: Candidate | None,
    test: SignTest | None,
    optimizer_run_id: str | None,
    client: LLMClient,
) -> None:
    s, result, parent, ev = night.settings, night.result, night.parent, night.evaluator
    assert parent is not None and ev is not None and night.evidence is not None
    accepted = test is not None and winner is not None and test.accepted(s.confirm_alpha)
    status = "proposed" if accepted else "not_better"
    if accepted:
        reason = f"confirmed on the confirmation items: {test.summary()}"  # type: ignore[union-attr]
        result.stop_reason = result.stop_reason or "a candidate was confirmed"
    elif test is not None:
        reason = f"not confirmed (p >= {s.confirm_alpha:g}): {test.summary()}"
        result.stop_reason = result.stop_reason or "the best candidate was not confirmed"
    else:
        reason = result.stop_reason or "nothing was tested"
    evidence = _offline_evidence(night, winner, test)
    tested = winner if winner is not None and winner.candidate_id != parent.candidate_id else None
    diff = (
        {
            k: {"from": parent.values.get(k), "to": v}
            for k, v in tested.values.items()
            if parent.values.get(k) != v
        }
        if tested is not None
        else None
    )
    ev_units = night.evidence
    row = {
        "proposal_id": proposal_id,
        "pipeline": night.pipeline,
        "status": status,
        "status_reason": reason,
        "optimizer": OPTIMIZER_NAME,
        "optimizer_run_id": optimizer_run_id,
        "update_index": 1,
        "parent_param_set_id": parent.candidate_id,
        # a not_better night proposes nothing: its best candidate is in offline_evidence
        "candidate_param_set_id": tested.candidate_id if accepted and tested else None,
        "diff": diff or None,
        "suggestion": {k: d["to"] for k, d in diff.items()} if diff else None,
        "reasoning": (tested.meta.get("reasoning") or None) if tested else None,
        "kpi": night.kpi,
        "direction": s.direction,
        "evidence_kpi_mean": ev_units.population_mean,
        "evidence_units": ev_units.population_units,
        "evidence_run_ids": sorted(night.pools.evidence),
        "evidence_item_keys": [u.item_key for u in ev_units.units if u.item_key],
        "settings": s.recorded(),
        "model": client.model,
        "response_format": client.response_format,
        "attempts": night.budget.used_optimizer_calls,
        "cost_usd": night.budget.used_usd if night.budget.used_usd else None,
        "trace_id": night.trace_id,
        "night_id": night.night_id,
        "offline_evidence": evidence,
    }
    scored = [
        c
        for c in [*result.candidates]
        if c.candidate_id in ev.scores and c.candidate_id != parent.candidate_id
    ]
    record_proposal(
        night.wh,
        row,
        tested.values if accepted and tested else None,
        night.schema_version,
        [(c.candidate_id, c.values, "search") for c in scored if not (accepted and c is tested)],
    )
    spool.append(_score_rows(night, proposal_id), night.wh.spool_dir)
    if night.credits:
        spool.append(credit_rows(night.pipeline, night.credits, proposal_id), night.wh.spool_dir)
    result.status, result.proposal_id, result.offline_evidence = status, proposal_id, evidence
    result.updates.append(
        UpdateOutcome(
            proposal_id=proposal_id,
            status=status,
            reason=reason,
            diff=diff,
            candidate_param_set_id=row["candidate_param_set_id"],
            attempts=night.budget.used_optimizer_calls,
            tokens=night.tokens,
        )
    )
    night.say(f"{status} {proposal_id}: {reason}")


def _score_rows(night: _Night, proposal_id: str) -> list[dict[str, Any]]:
    """Every per-item score of the night as ``candidate_scores`` rows."""
    ev, result, parent = night.evaluator, night.result, night.parent
    assert ev is not None and parent is not None
    pool_of = {r: "selection" for r in night.pools.selection}
    pool_of.update({r: "confirmation" for r in night.pools.confirmation})
    generator = {c.candidate_id: c.generator for c in result.candidates}
    generator[parent.candidate_id] = "parent"
    now = utcnow().isoformat()
    rows = []
    for cid, scores in ev.scores.items():
        for iid, value in scores.items():
            run_id, key = split_item_id(iid)
            pool = pool_of.get(run_id)
            if pool is None:
                continue
            rows.append(
                row_record(
                    "candidate_scores",
                    {
                        "night_id": night.night_id,
                        "pipeline": night.pipeline,
                        "proposal_id": proposal_id,
                        "candidate_id": cid,
                        "parent_id": parent.candidate_id,
                        "generator": generator.get(cid),
                        "item_id": iid,
                        "run_id": run_id,
                        "item_key": key,
                        "pool": pool,
                        "score": value,
                        "source": ev.sources.get(cid, {}).get(iid),
                        "kpi": night.kpi,
                        "created_at": now,
                    },
                )
            )
    return rows


def _pool_infos(night: _Night) -> list[RunInfo]:
    """The runs the evaluator may replay: the selection's and the confirmation's."""
    wanted = set(night.pools.selection) | set(night.pools.confirmation)
    return [info for rid, info in night.runs.items() if rid in wanted]


def _progress(night: _Night) -> Callable[[Candidate, int, int], None]:
    """Progress lines of the evaluator (:class:`~.core.ProgressLine`): the stage, the
    candidate, items done of total and an ETA from the measured per-item replay time (the
    items still to score in this stage: this candidate's, and the winner's while the
    parent is confirmed)."""

    def report(c: Candidate, done: int, total: int) -> None:
        ev = night.evaluator
        per_item = ev.seconds_per_item() if ev is not None else None
        left = total - done + night.stage_after
        eta = per_item * left if per_item is not None else None
        night.say(
            ProgressLine(
                f"  {night.stage}: replaying {c.candidate_id} ({c.generator}): {done}/{total} "
                f"items, {night.budget.used_task_calls} task call(s) so far, "
                f"ETA {eta_text(eta)}",
                stage=night.stage,
                candidate=c.candidate_id,
                generator=c.generator,
                done=done,
                total=total,
                eta_s=eta,
            )
        )

    return report
