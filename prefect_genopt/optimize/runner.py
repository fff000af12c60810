"""One optimizer run: evidence -> problem -> LLM -> parse -> validate -> proposal.

:func:`optimize` is what ``flows/optimize.py`` and ``genopt optimize`` call. With
``settings.search`` (the default) it runs one night of the search
(:func:`prefect_genopt.optimize.search.night.run_night`: drafts and demo sets chosen on
replayed items, proposed only when a paired test confirms them). With ``search=False``
it is the single-shot path described here: each update takes a fresh minibatch,
builds the problem with the optimizer (OptoPrime by default), calls the LLM through
litellm (one retry, saying what was wrong, when the answer is unusable), checks the
suggestion against the Tunables schema and records the outcome as a ``proposals``
row: ``proposed`` (a new immutable candidate param set), ``rejected`` (with the
reason) or ``no_change``. The run stops after ``max_updates``, after
``proposals_per_run`` valid proposals, or before a call the budget cannot pay for.

Both paths edit only what the evidence shows being read (:func:`editable_tonight`, decided
once before either runs): a Tunables field no task and no flow body read in the window's
evidence runs (the spans' ``params_read``) is not editable that night, and the run says so;
an explicit ``starting_artifact.editable`` (``--editable``) wins.

Example:
    >>> OptimizeResult(stop_reason="done").summary()
    '0 proposal(s), 0 rejected, 0 no-change in 0 update(s); 0 tokens, cost unpriced; stopped: done'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from prefect_genopt import spool
from prefect_genopt.optimize.config import OptimizerSettings
from prefect_genopt.optimize.evidence import Evidence, Unit, collect, fresh_warehouse
from prefect_genopt.optimize.instruction import current_instruction, tune_instruction
from prefect_genopt.optimize.llm import (
    Budget,
    BudgetExhausted,
    LLMCallError,
    LLMClient,
    LLMReply,
    LLMTimeout,
    ReplyError,
    parse_reply,
)
from prefect_genopt.optimize.memory import memory
from prefect_genopt.optimize.optoprime import Optimizer, OptoPrime, Problem, answer_schema
from prefect_genopt.optimize.step_credit import assign, credit_rows
from prefect_genopt.optimize.validate import (
    Checked,
    SuggestionError,
    check_suggestion,
    editable_fields,
)
from prefect_genopt.proposals.proposals import new_proposal_id, record_proposal
from prefect_genopt.redaction import clean
from prefect_genopt.replay.experiences import verified_demos
from prefect_genopt.tracing import tracer
from prefect_genopt.tunables import param_set_id
from prefect_genopt.warehouse import Warehouse, WarehouseBusyError
from prefect_genopt.warehouse.schema import utcnow

__all__ = ["optimize", "OptimizeResult", "UpdateOutcome", "editable_tonight", "params_read_in"]

logger = logging.getLogger("prefect_genopt.optimize")

#: the answer was cut at the token cap: what the retry says
CUT_OFF_HINT = "it was cut off at the token limit before the JSON ended; keep the reasoning short"


@dataclass
class UpdateOutcome:
    """What one update did."""

    proposal_id: str
    status: str  # proposed | rejected | no_change
    reason: str | None
    diff: dict[str, Any] | None
    candidate_param_set_id: str | None
    attempts: int
    tokens: int


@dataclass
class OptimizeResult:
    """What one optimizer run did."""

    updates: list[UpdateOutcome] = field(default_factory=list)
    stop_reason: str = ""
    tokens: int = 0
    cost_usd: float | None = None
    llm_calls: int = 0
    seconds: float = 0.0
    llm_seconds: float = 0.0
    model: str | None = None
    evidence_units: int = 0

    @property
    def proposals(self) -> list[UpdateOutcome]:
        """The valid proposals (new candidates)."""
        return [u for u in self.updates if u.status == "proposed"]

    def summary(self) -> str:
        n = {
            s: sum(u.status == s for u in self.updates)
            for s in ("proposed", "rejected", "no_change")
        }
        cost = "unpriced" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return (
            f"{n['proposed']} proposal(s), {n['rejected']} rejected, {n['no_change']} no-change "
            f"in {len(self.updates)} update(s); {self.tokens} tokens, cost {cost}; "
            f"stopped: {self.stop_reason}"
        )


def _estimate_tokens(messages: list[dict[str, str]], max_out: int) -> int:
    """A cheap, generous token estimate of a call (about 3.5 characters per token)."""
    chars = sum(len(m["content"]) for m in messages)
    return int(chars / 3.5) + max_out


class _Update:
    """The attempts (first call, at most one retry) of one update."""

    def __init__(self) -> None:
        self.replies: list[LLMReply] = []
        self.reasoning = ""
        self.suggestion: Any = None
        self.checked: Checked | None = None
        self.status = "rejected"
        self.reason: str | None = None

    @property
    def tokens(self) -> tuple[int, int]:
        return (
            sum(r.input_tokens for r in self.replies),
            sum(r.output_tokens for r in self.replies),
        )

    @property
    def cost(self) -> float | None:
        costs = [r.cost_usd for r in self.replies if r.cost_usd is not None]
        return sum(costs) if costs else None


def _attempt(
    client: LLMClient,
    optimizer: Optimizer,
    problem: Problem,
    budget: Budget,
    settings: OptimizerSettings,
    say: Callable[[str], None],
) -> _Update:
    """Call, parse and check; retry once on an unusable answer. Raises BudgetExhausted
    before a call the budget cannot pay for (the update's earlier replies are kept)."""
    upd = _Update()
    pools = problem.extra.get("demo_pools") or {}
    schema = answer_schema(problem.schema, problem.editable, pools)
    messages = optimizer.messages(problem)
    for attempt in (1, 2):
        budget.check(_estimate_tokens(messages, settings.max_output_tokens))
        temperature = (
            None if attempt == 1 else max(settings.temperature, settings.retry_temperature)
        )
        try:
            reply = client.complete(messages, schema, temperature)
        except LLMTimeout as exc:
            upd.reason = f"timeout: {exc}"
            return upd
        budget.charge(reply)
        upd.replies.append(reply)
        try:
            upd.reasoning, upd.suggestion = parse_reply(reply.text)
            upd.suggestion = resolve_demos(upd.suggestion, pools)
            upd.checked = check_suggestion(
                upd.suggestion, problem.schema, problem.current, problem.editable
            )
            upd.status, upd.reason = "proposed", None
            return upd
        except ReplyError as exc:
            why = CUT_OFF_HINT if reply.finish_reason == "length" else str(exc)
            upd.reason = f"unparsable answer: {why}"
        except SuggestionError as exc:
            if exc.kind == "no_change":
                # an empty suggestion, or every value the current one: a retry is not asked
                # (the embedded optimizer repeated its echo on 41 of 42 retries in the BBH benches)
                upd.status = "no_change"
                upd.reason = (
                    f"invalid suggestion: {exc}"
                    if upd.suggestion
                    else "the model asked for no change"
                )
                return upd
            why = str(exc)
            upd.reason = f"invalid suggestion: {why}"
        if attempt == 1:
            say(f"  answer unusable ({upd.reason}); retrying once")
            messages = optimizer.retry_messages(problem, messages, reply.text, why)
    return upd


@dataclass
class _Run:
    """The state one optimizer run shares between its updates."""

    settings: OptimizerSettings
    wh: Warehouse
    evidence: Evidence
    optimizer: Optimizer
    client: LLMClient
    budget: Budget
    say: Callable[[str], None]
    result: OptimizeResult
    parent_id: str
    editable: list[str]
    memory: list[Any]
    optimizer_run_id: str | None
    trace_id: str = ""
    #: the tuned optimizer instruction in use (None: the default or a custom optimizer's)
    instruction_id: str | None = None
    extra_sets: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    def update(self, i: int, batch: list[Unit]) -> bool:
        """One update; False when the run must stop (budget)."""
        s, ev = self.settings, self.evidence
        credits = assign(self.wh, ev, batch) if s.step_credit else None
        problem = self.optimizer.problem(ev, batch, self.memory, s, self.editable, credits)
        prompt_chars = sum(len(m["content"]) for m in self.optimizer.messages(problem))
        labels = ", ".join(u.label for u in batch[:4]) + ("..." if len(batch) > 4 else "")
        self.say(
            f"update {i + 1}/{s.max_updates}: {len(batch)} units ({labels}), prompt "
            f"{prompt_chars} chars, {problem.truncations} cut(s) at the credit horizon"
        )
        if credits is not None:
            step = problem.extra.get("focus_step")
            self.say(
                f"  step credit: {len(credits)} failed unit(s) judged; "
                + (
                    f"focused on step {step!r} ({', '.join(problem.editable)})"
                    if step
                    else "no step reads an editable param: whole trace"
                )
            )
        with tracer().start_as_current_span(
            "genopt.optimize.update", attributes={"genopt.optimizer.update": i + 1}
        ):
            try:
                upd = _attempt(self.client, self.optimizer, problem, self.budget, s, self.say)
            except BudgetExhausted as exc:
                self.result.stop_reason = f"budget exhausted: {exc}"
                self.say(f"stopping: {self.result.stop_reason}")
                return False
            except LLMCallError as exc:
                self.result.stop_reason = f"LLM call failed: {exc}"
                raise
        if upd.status == "proposed" and upd.checked is not None:
            earlier = self._earlier_proposal(param_set_id(upd.checked.values))
            if earlier:
                upd.status, upd.reason = "no_change", f"the candidate repeats {earlier}"
        pid = self._record(i, batch, upd, prompt_chars)
        if credits:
            spool.append(credit_rows(ev.pipeline.name, credits, pid), self.wh.spool_dir)
        return True

    def _earlier_proposal(self, candidate: str) -> str | None:
        """An earlier proposal (this run's, or in the warehouse) of the same candidate."""
        for u in self.result.updates:
            if u.candidate_param_set_id == candidate:
                return f"proposal {u.proposal_id} of this run"
        rows = self.wh.sql(
            "SELECT proposal_id, status FROM proposals WHERE pipeline = ? "
            "AND candidate_param_set_id = ? ORDER BY created_at LIMIT 1",
            [self.evidence.pipeline.name, candidate],
        )
        return f"proposal {rows[0]['proposal_id']} ({rows[0]['status']})" if rows else None

    def _record(self, i: int, batch: list[Unit], upd: _Update, prompt_chars: int) -> str:
        ev, checked = self.evidence, upd.checked
        pid = new_proposal_id()
        candidate = param_set_id(checked.values) if checked and upd.status == "proposed" else None
        n_in, n_out = upd.tokens
        llm_seconds = sum(r.seconds for r in upd.replies)
        row = {
            "proposal_id": pid,
            "pipeline": ev.pipeline.name,
            "status": upd.status,
            "status_reason": upd.reason,
            "optimizer": self.optimizer.name,
            "optimizer_run_id": self.optimizer_run_id,
            "update_index": i + 1,
            "parent_param_set_id": self.parent_id,
            "candidate_param_set_id": candidate,
            "diff": checked.diff if checked else None,
            # the suggestion as a JSON object (its values are what the candidate stores verbatim)
            "suggestion": upd.suggestion if isinstance(upd.suggestion, dict) else None,
            "reasoning": clean(upd.reasoning, 4000) if upd.reasoning else None,
            "kpi": ev.kpi,
            "direction": ev.direction,
            "evidence_kpi_mean": sum(u.value for u in batch) / len(batch) if batch else None,
            "evidence_units": len(batch),
            "evidence_run_ids": sorted({u.run_id for u in batch}),
            "evidence_item_keys": [u.item_key for u in batch if u.item_key],
            "settings": {**self.settings.recorded(), "instruction_id": self.instruction_id},
            "model": self.client.model,
            "response_format": self.client.response_format,
            "attempts": len(upd.replies),
            "ignored_keys": checked.ignored if checked else None,
            "unchanged_keys": checked.unchanged if checked else None,
            "input_tokens": n_in,
            "output_tokens": n_out,
            "cost_usd": upd.cost,
            "prompt_chars": prompt_chars,
            "llm_seconds": llm_seconds,
            "trace_id": self.trace_id,
        }
        record_proposal(
            self.wh,
            row,
            checked.values if candidate else None,
            ev.pipeline.schema_version,
            self.extra_sets,
        )
        self.extra_sets = []  # registered once, with the first proposal
        self.result.llm_seconds += llm_seconds
        self.result.updates.append(
            UpdateOutcome(
                proposal_id=pid,
                status=upd.status,
                reason=upd.reason,
                diff=checked.diff if checked else None,
                candidate_param_set_id=candidate,
                attempts=len(upd.replies),
                tokens=n_in + n_out,
            )
        )
        if candidate and checked:
            ignored = f"; ignored {checked.ignored}" if checked.ignored else ""
            self.say(
                f"  proposal {pid}: changes {', '.join(checked.diff)} -> candidate "
                f"{candidate}{ignored}"
            )
        else:
            self.say(f"  {upd.status}: {upd.reason}")
        return pid


#: most verified experiences shown to the optimizer per ``demos`` param
DEMO_POOL_SIZE = 12


def demo_pools(
    wh: Warehouse, evidence: Evidence, editable: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """For each editable ``demos`` param tied to a step: its verified experiences by id."""
    props = evidence.pipeline.schema.get("properties") or {}
    pools = {}
    for name in editable:
        spec = props.get(name) or {}
        if spec.get("genopt_kind") == "demos" and spec.get("genopt_step"):
            demos = verified_demos(
                evidence.pipeline.name, spec["genopt_step"], limit=DEMO_POOL_SIZE, warehouse=wh
            )
            pools[name] = {d["id"]: d for d in demos}
    return pools


def resolve_demos(suggestion: Any, pools: dict[str, dict[str, dict[str, Any]]]) -> Any:
    """Experience ids in a suggestion for a pooled ``demos`` param -> the demos.

    Raises:
        ReplyError: An id that is not one of the candidates shown.
    """
    if not pools or not isinstance(suggestion, dict):
        return suggestion
    out = dict(suggestion)
    for name, pool in pools.items():
        picked = out.get(name)
        if picked is None:
            continue
        if not isinstance(picked, list) or not all(isinstance(i, str) for i in picked):
            raise ReplyError(f"{name} must be a list of experience ids from #Demo candidates")
        unknown = [i for i in picked if i not in pool]
        if unknown:
            raise ReplyError(f"{name}: {', '.join(unknown)} are not among the #Demo candidates")
        out[name] = [
            {"input": pool[i]["input"], "output": pool[i]["output"], "experience_id": i}
            for i in picked
        ]
    return out


#: The params read in a pipeline's evidence runs (its runs with feedback in the window): the
#: keys of every span's ``params_read`` (tasks' reads, and the flow body's on the flow span).
PARAMS_READ_SQL = """
WITH evidence AS (
    SELECT DISTINCT f.run_id FROM feedback f
    WHERE f.pipeline = ? AND f.created_at >= ? AND f.value IS NOT NULL
)
SELECT (SELECT count(*) FROM evidence) AS runs,
       list_sort(list_distinct(flatten(list(json_keys(s.params_read))))) AS names
FROM spans s
WHERE s.run_id IN (SELECT run_id FROM evidence) AND s.params_read IS NOT NULL
"""


def params_read_in(wh: Warehouse, pipeline: str, window_days: float) -> tuple[int, list[str]]:
    """``(evidence runs, params read in them)``: the pipeline's runs with feedback in the
    last ``window_days`` days, and the names any of their spans read, sorted."""
    since = utcnow() - timedelta(days=window_days)
    (row,) = wh.sql(PARAMS_READ_SQL, [pipeline, since])
    return int(row["runs"] or 0), list(row["names"] or [])


def editable_tonight(
    wh: Warehouse, settings: OptimizerSettings, say: Callable[[str], None]
) -> OptimizerSettings:
    """``settings`` with the fields no evidence run read taken out of the editable ones.

    An explicit ``starting_artifact.editable`` is kept as given. So are the settings when
    the pipeline is unknown (the evidence reader says so), when no evidence run recorded a
    read (nothing to go by), or when every field was read. Otherwise the editable fields
    are the ones read, in schema order, and ``say`` names those left out and why.
    """
    start = settings.starting_artifact
    if start.editable is not None:
        return settings
    rows = wh.sql(
        "SELECT schema FROM pipelines WHERE pipeline = ? ORDER BY version DESC LIMIT 1",
        [settings.pipeline],
    )
    if not rows:
        return settings
    fields = list((orjson.loads(rows[0]["schema"]).get("properties") or {}).keys())
    runs, read = params_read_in(wh, settings.pipeline, settings.window_days)
    if not runs or not read:
        return settings
    editable = [f for f in fields if f in read]
    unread = [f for f in fields if f not in read]
    if not unread or not editable:
        return settings
    say(
        f"not editable tonight: {', '.join(unread)} (read by no task or flow body in the "
        f"{runs} evidence run(s) of the last {settings.window_days:g} days; --editable "
        f"{' '.join(fields)} edits them anyway); editable: {', '.join(editable)}"
    )
    return settings.model_copy(
        update={"starting_artifact": start.model_copy(update={"editable": editable})}
    )


def optimize(
    settings: OptimizerSettings,
    *,
    warehouse: str | Path | Warehouse | None = None,
    optimizer: Optimizer | None = None,
    progress: Callable[[str], None] | None = None,
    optimizer_run_id: str | None = None,
    client: LLMClient | None = None,
) -> OptimizeResult:
    """Run the optimizer once for ``settings.pipeline`` and record its proposals.

    Args:
        settings: What to optimize and how (see :class:`OptimizerSettings`).
        warehouse: The warehouse (default: the configured one).
        optimizer: The optimizer (default: :class:`OptoPrime`).
        progress: Called with one line per step (default: the module logger).
        optimizer_run_id: Recorded with each proposal (the flow run id in the flow).
        client: The optimizer model's client (default: ``LLMClient.configured`` with the
            model, response format, output tokens, temperature and timeout of ``settings``).
            The instruction tuner (``settings.tune_instruction_every``) still calls
            ``settings.model``. The search's generators call it too.

    Returns:
        With ``settings.search``, a :class:`~prefect_genopt.optimize.search.night.NightResult`
        (an :class:`OptimizeResult` whose one update is the night's ``proposed`` or
        ``not_better`` proposal, none when there were too few items).

    Raises:
        EvidenceError: No usable evidence (unknown pipeline, no feedback in the window).
        LLMCallError: The provider failed (after recording the failed update).
    """
    t0 = time.perf_counter()
    say = progress or logger.info
    wh = fresh_warehouse(warehouse, say)
    settings = editable_tonight(wh, settings, say)  # both paths edit only what was read
    if settings.search:
        from prefect_genopt.optimize.search.night import run_night

        return run_night(
            settings,
            warehouse=wh,
            client=client,
            progress=progress,
            optimizer=optimizer,
            optimizer_run_id=optimizer_run_id,
        )
    instruction_id = None
    if optimizer is None:
        if settings.tune_instruction_every:
            tuned = tune_instruction(
                settings.pipeline,
                every=settings.tune_instruction_every,
                model=settings.model,
                response_format=settings.response_format,
                warehouse=wh,
                progress=say,
            )
            if tuned.status != "tuned":
                say(f"optimizer instruction not tuned: {tuned.reason}")
        instruction_id, text = current_instruction(wh, settings.pipeline)
        optimizer = OptoPrime(instruction=text)
    if client is None:
        client = LLMClient.for_settings(settings)
    evidence = collect(wh, settings)
    start = settings.starting_artifact
    evidence.demo_pools = demo_pools(
        wh, evidence, editable_fields(evidence.pipeline.schema, start.editable)
    )
    extra_sets: list[tuple[str, dict[str, Any], str]] = []
    parent_id = evidence.parent_param_set_id
    if start.start_from == "values":
        evidence.parent_values = {**evidence.parent_values, **(start.values or {})}
        parent_id = param_set_id(evidence.parent_values)
        extra_sets.append((parent_id, evidence.parent_values, "starting_artifact"))
    run = _Run(
        settings=settings,
        wh=wh,
        evidence=evidence,
        optimizer=optimizer,
        instruction_id=instruction_id,
        client=client,
        budget=Budget(settings.budget_tokens, settings.budget_usd),
        say=say,
        result=OptimizeResult(model=client.model, evidence_units=evidence.population_units),
        parent_id=parent_id,
        editable=editable_fields(evidence.pipeline.schema, start.editable),
        memory=memory(wh, settings.pipeline, settings.memory_size),
        optimizer_run_id=optimizer_run_id,
        extra_sets=extra_sets,
    )
    result = run.result
    say(
        f"optimizing {settings.pipeline!r} with {optimizer.name} on {client.model} "
        f"({client.response_format}): KPI "
        f"{evidence.kpi!r} mean {evidence.population_mean:.3g} over {evidence.population_units} "
        f"{'items' if evidence.per_item else 'runs'} of param set {evidence.parent_param_set_id}; "
        f"editable: {', '.join(run.editable)}"
    )
    span_attrs = {
        "genopt.optimizer.pipeline": settings.pipeline,
        "genopt.optimizer.name": optimizer.name,
        "genopt.optimizer.model": client.model,
    }
    with tracer().start_as_current_span("genopt.optimize", attributes=span_attrs) as root:
        run.trace_id = format(root.get_span_context().trace_id, "032x")
        try:
            for i, batch in enumerate(evidence.minibatches[: settings.max_updates]):
                if not run.update(i, batch):
                    break
                if len(result.proposals) >= settings.proposals_per_run:
                    result.stop_reason = f"{len(result.proposals)} proposal(s) made"
                    break
            else:
                result.stop_reason = f"max_updates ({settings.max_updates}) reached"
        finally:
            result.tokens = run.budget.tokens
            result.cost_usd = run.budget.cost_usd
            result.llm_calls = run.budget.calls
            result.seconds = time.perf_counter() - t0
            root.set_attribute("genopt.optimizer.stop_reason", result.stop_reason or "error")
    try:
        wh.ingest()
    except WarehouseBusyError as exc:
        say(f"proposals wait in the spool (warehouse busy): {exc}")
    say(result.summary())
    return result
