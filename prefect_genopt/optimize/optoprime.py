"""OptoPrime over spans: the evidence as an OPTO problem, and the optimizer class.

OptoPrime (Trace, Cheng et al. 2024) shows an LLM the execution trace of a
program as a problem with fixed sections and asks for new values of the
trainable nodes. Here the trace is a minibatch of units from the warehouse:

* ``#Instruction``: what to do (:data:`INSTRUCTION`);
* ``#Code`` / ``#Documentation``: the pipeline, its tasks and their docstrings;
* ``#Variables``: the editable params with type and current value;
* ``#Constraints``: each param's description, bounds, choices, length;
* per unit ``#Inputs``, ``#Others`` (intermediate steps: tasks, LLM calls),
  ``#Outputs`` and ``#Feedback`` (KPI, text critique); then the minibatch's
  aggregate ``#Feedback``;
* ``#Memory``: past proposals for the pipeline with their outcomes (left out while
  there are none).

Values are cut at the credit horizon with a visible mark. The answer is
``{"reasoning": ..., "suggestion": {name: value}}`` (an empty suggestion asks
for no change). Other optimizers (reflection memory, step-level credit) plug in
by subclassing :class:`Optimizer`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import orjson

from prefect_genopt.optimize.config import OptimizerSettings
from prefect_genopt.optimize.evidence import Evidence, Step, Unit
from prefect_genopt.optimize.step_credit import Credit, focus
from prefect_genopt.redaction import redact, truncate

__all__ = [
    "INSTRUCTION",
    "ANSWER_FORMAT",
    "RETRY_TEMPLATE",
    "SYSTEM_PROMPT",
    "MemoryEntry",
    "Problem",
    "Optimizer",
    "OptoPrime",
    "answer_schema",
]

SYSTEM_PROMPT = (
    "You are an optimizer of production pipelines. You read execution traces and feedback "
    "and you answer with one JSON object only."
)

INSTRUCTION = """\
You are improving the parameters of a pipeline that runs in production. Below are the \
pipeline's code summary (#Code), its editable parameters with their current values \
(#Variables) and the rules each must follow (#Constraints), then a minibatch of recent \
executions: what went in (#Inputs), the intermediate steps, including model calls \
(#Others), what came out (#Outputs) and how it was judged (#Feedback). Find out why the \
feedback is what it is, then change the #Variables so that the feedback improves on these \
and similar inputs without breaking the cases that already go well. Only the parameters \
listed in #Variables can change: inputs, outputs, steps and code cannot. Prefer a concrete \
change that would have turned the failed examples into passes (a new or extended rule, a \
cue, a required answer format) over rewording: a reworded value that says the same thing \
changes nothing. A prompt should stay general: state the rule that fixes a whole class of \
cases rather than quoting single examples."""

ANSWER_FORMAT = """\
Answer with one JSON object and nothing else:
{"reasoning": "<what went wrong in the examples that did badly, why, and what to change; \
at most three sentences>", \
"suggestion": {"<parameter name>": <new value>}}
Put in "suggestion" only parameters from #Variables whose value you change, each with a \
new value (not the current one) of the type and within the bounds given in #Constraints. \
Inside JSON strings, quote with single quotes ('like this'), never with bare double quotes. \
If no change would help, answer with an empty suggestion: {"reasoning": "<why>", \
"suggestion": {}}."""

RETRY_TEMPLATE = """\
Your previous answer could not be used: {why}. Answer again with only the JSON object \
described above: {{"reasoning": "...", "suggestion": {{...}}}}, suggesting only these \
parameters: {names}."""

#: the step-focused problem (STeCa): added to the instruction when step credit names a step
STEP_FOCUS = """\
Step credit: in the failed examples below, the first step that went wrong is the task \
{step!r} ({n} of {m} failed examples blame it; for example: {why}). Only that step is shown, \
with the parameters it reads: the other steps did their part. Reflect on this step alone: \
what in its parameters makes it turn inputs like these into the wrong output, then change \
them so that it produces the right one."""

#: how the demo candidates (verified experiences) of a ``demos`` param are introduced
DEMO_POOL_NOTE = (
    "{name} is a list of few-shot demos picked from these verified experiences of step "
    "{step!r} (each ran right and passed its checks); to change it, answer a list of their "
    "ids, at most {most}, e.g. [{example}]:"
)

TRUNCATED_STEPS = "…[{n} more steps truncated]"
#: how a step that repeats a long string variable's current value shows it
REFERENCE = "<value of {name}>"
REFERENCE_NOTE = "(In the examples below, <value of NAME> stands for the current value of NAME.)"
#: string variables at least this long are referred to, not repeated, inside steps
REFERENCE_MIN_CHARS = 16
REASONING_MAX_CHARS = 800


@dataclass
class MemoryEntry:
    """A past proposal shown to the optimizer, with what became of it."""

    proposal_id: str
    created_at: str
    diff: dict[str, Any]
    reasoning: str
    status: str
    outcome: str | None = None


@dataclass
class Problem:
    """One update's problem: the rendered sections and what the answer may contain."""

    pipeline: str
    editable: list[str]
    current: dict[str, Any]  # the parent param set's full values
    schema: dict[str, Any]
    sections: list[tuple[str, str]]
    units: list[Unit]
    truncations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        """The problem text (redacted once more: no secret ever reaches a prompt)."""
        return redact("\n\n".join(f"{title}\n{body}" for title, body in self.sections))


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def answer_schema(
    schema: dict[str, Any],
    editable: list[str],
    demo_pools: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON schema of an answer: ``suggestion`` keys are only the editable params.

    Example:
        >>> s = answer_schema({"properties": {"p": {"type": "string", "maxLength": 50},
        ...                                   "t": {"type": "number"}}}, ["p"])
        >>> list(s["properties"]["suggestion"]["properties"]), s["properties"]["suggestion"][
        ...     "additionalProperties"]
        (['p'], False)
    """
    props = schema.get("properties") or {}
    suggestion: dict[str, Any] = {}
    for name in editable:
        spec = {
            k: v
            for k, v in (props.get(name) or {}).items()
            if k
            in (
                "type",
                "enum",
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum",
                "maxLength",
                "minLength",
                "items",
                "maxItems",
            )
        }
        if spec.get("type") == "string" and "maxLength" not in spec:
            spec["maxLength"] = 8000
        if demo_pools and name in demo_pools:  # demos are picked by experience id
            spec["items"] = {"type": "string", "enum": sorted(demo_pools[name])}
        suggestion[name] = spec
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": REASONING_MAX_CHARS},
            "suggestion": {
                "type": "object",
                "properties": suggestion,
                "additionalProperties": False,
            },
        },
        "required": ["reasoning", "suggestion"],
        "additionalProperties": False,
    }


def _focus_unit(unit: Unit, step: str, reason: str | None) -> Unit:
    """``unit`` seen through one step: its inputs, its model calls, its output, and the
    step-credit verdict added to the critiques."""
    node = next(
        (s for root in unit.steps for _, s in root.walk() if s.kind == "task" and s.name == step),
        None,
    )
    comments = [*unit.comments, *([f"step credit: {reason}"] if reason else [])]
    if node is None:
        return replace(unit, comments=comments)
    return replace(
        unit,
        comments=comments,
        inputs=node.inputs,
        output=node.output,
        steps=[replace(node, inputs=None)],
    )


class Optimizer(abc.ABC):
    """The interface of an optimizer: evidence in, LLM messages out.

    The runner gathers the evidence, calls the LLM, parses, validates and
    records; an optimizer only decides what the LLM sees. Subclass it to change
    the problem (a focus on one step, a memory of rated reflections...).
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def problem(
        self,
        evidence: Evidence,
        batch: list[Unit],
        memory: list[MemoryEntry],
        settings: OptimizerSettings,
        editable: list[str],
        credits: list[Credit] | None = None,
    ) -> Problem:
        """Build one update's problem from a minibatch (focused on one step when
        ``credits`` blame one, see :mod:`prefect_genopt.optimize.step_credit`)."""

    @abc.abstractmethod
    def messages(self, problem: Problem) -> list[dict[str, str]]:
        """The chat messages of the first call for ``problem``."""

    def retry_messages(
        self, problem: Problem, first: list[dict[str, str]], answer: str, why: str
    ) -> list[dict[str, str]]:
        """The messages of the one retry after an unusable answer, saying what was wrong."""
        return [
            *first,
            {"role": "assistant", "content": answer[:4000]},
            {
                "role": "user",
                "content": RETRY_TEMPLATE.format(why=why, names=", ".join(problem.editable)),
            },
        ]


class OptoPrime(Optimizer):
    """OptoPrime's problem structure over warehouse spans (see the module docstring)."""

    name = "optoprime"
    instruction: str = INSTRUCTION
    answer_format: str = ANSWER_FORMAT

    def __init__(self, instruction: str | None = None) -> None:
        if instruction is not None:
            self.instruction = instruction

    # -- sections -----------------------------------------------------------------------

    def _code(self, evidence: Evidence) -> str:
        p = evidence.pipeline
        lines = [f"pipeline {p.name!r} (flow {p.flow_name or p.name!r})"]
        if p.doc:
            lines.append(f"  {p.doc}")
        for name, doc in p.tasks.items():
            lines.append(f"  task {name}: {doc or '(no docstring)'}")
        return "\n".join(lines)

    def _variables(
        self, problem_schema: dict[str, Any], values: dict[str, Any], editable: list[str]
    ) -> str:
        props = problem_schema.get("properties") or {}
        lines = []
        for name in editable:
            spec = props.get(name) or {}
            typ = spec.get("type") or ("choice" if "enum" in spec else "value")
            lines.append(f"({typ}) {name} = {_json(values.get(name))}")
        fixed = [n for n in props if n not in editable]
        if fixed:
            lines.append(
                "fixed (not editable): " + ", ".join(f"{n} = {_json(values.get(n))}" for n in fixed)
            )
        return "\n".join(lines)

    def _constraints(self, problem_schema: dict[str, Any], editable: list[str]) -> str:
        props = problem_schema.get("properties") or {}
        lines = []
        for name in editable:
            spec = props.get(name) or {}
            rules = []
            if "enum" in spec:
                rules.append(f"one of {_json(spec['enum'])}")
            for key, word in (
                ("minimum", ">="),
                ("exclusiveMinimum", ">"),
                ("maximum", "<="),
                ("exclusiveMaximum", "<"),
            ):
                if key in spec:
                    rules.append(f"{word} {spec[key]}")
            if "maxLength" in spec:
                rules.append(f"at most {spec['maxLength']} characters")
            if "maxItems" in spec:
                rules.append(f"at most {spec['maxItems']} items")
            desc = spec.get("description") or ""
            lines.append(f"{name}: {desc}" + (f" ({'; '.join(rules)})" if rules else ""))
        return "\n".join(lines)

    def _cut(
        self, text: Any, settings: OptimizerSettings, problem: Problem, refer: bool = False
    ) -> str:
        s = text if isinstance(text, str) else _json(text)
        if refer:
            s = self._refer(s, problem)
        limit = settings.credit_horizon.max_value_chars
        if len(s) > limit:
            problem.truncations += 1
            return truncate(s, limit)
        return s

    def _refer(self, text: str, problem: Problem) -> str:
        """Replace a long string variable's current value, where a step repeats it (a prompt
        inside a model call's messages, say), by a short reference: the example shows the
        step, #Variables shows the value once."""
        for name, value in problem.extra.get("refs", {}).items():
            for form in (value, _json(value)[1:-1]):
                if form in text:
                    text = text.replace(form, REFERENCE.format(name=name))
        return text

    def _steps(self, unit: Unit, settings: OptimizerSettings, problem: Problem) -> str:
        flat = [(d, s) for root in unit.steps for d, s in root.walk()]
        if not settings.credit_horizon.include_llm_messages:
            flat = [(d, s) for d, s in flat if s.kind != "llm"]
        horizon = settings.credit_horizon.max_steps
        shown, hidden = flat[:horizon], len(flat) - horizon
        lines: list[str] = []
        for depth, step in shown:
            lines.extend(self._step(depth, step, settings, problem, unit.inputs))
        if hidden > 0:
            problem.truncations += 1
            lines.append(TRUNCATED_STEPS.format(n=hidden))
        return "\n".join(lines) if lines else "(no steps recorded)"

    def _step(
        self,
        depth: int,
        step: Step,
        settings: OptimizerSettings,
        problem: Problem,
        unit_inputs: str | None = None,
    ) -> list[str]:
        pad = "  " * depth
        if step.kind == "llm":
            out = [f"{pad}- model call {step.model or step.name}"]
            if step.prompt:
                out.append(f"{pad}  messages: {self._cut(step.prompt, settings, problem, True)}")
            if step.completion:
                out.append(f"{pad}  reply: {self._cut(step.completion, settings, problem)}")
            return out
        head = f"{pad}- {step.kind} {step.name}"
        if step.params_read:
            head += f" (read params: {', '.join(sorted(step.params_read))})"
        out = [head]
        if step.inputs and step.kind != "flow" and step.inputs != unit_inputs:
            out.append(f"{pad}  inputs: {self._cut(step.inputs, settings, problem, True)}")
        if step.error:
            out.append(f"{pad}  error: {self._cut(step.error, settings, problem)}")
        elif step.output is not None and step.kind != "flow":
            out.append(f"{pad}  output: {self._cut(step.output, settings, problem)}")
        return out

    def _feedback(
        self, unit: Unit, evidence: Evidence, settings: OptimizerSettings, problem: Problem
    ) -> str:
        better = "higher" if evidence.direction == "higher" else "lower"
        if evidence.binary:
            verdict = "PASSED" if evidence.passed(unit.value) else "FAILED"
            best = 1 if evidence.direction == "higher" else 0
            lines = [f"{evidence.kpi} = {unit.value:g}: this example {verdict} ({best} is a pass)"]
        else:
            mean = evidence.population_mean
            if unit.value == mean:
                side = "equal to"
            elif (unit.value > mean) == (better == "higher"):
                side = "better than"
            else:
                side = "worse than"
            lines = [
                f"{evidence.kpi} = {unit.value:g} ({better} is better; {side} the mean {mean:.3g})"
            ]
        for kpi, v in sorted(unit.other_kpis.items()):
            lines.append(f"{kpi} = {v:g}")
        for c in unit.comments:
            lines.append(f"critique: {self._cut(c, settings, problem)}")
        return "\n".join(lines)

    def _memory(
        self, memory: list[MemoryEntry], settings: OptimizerSettings, problem: Problem
    ) -> str:
        lines = []
        for m in memory:
            outcome = f"; outcome: {m.outcome}" if m.outcome else ""
            reasoning = self._cut(m.reasoning, settings, problem)
            lines.append(
                f"- {m.created_at} changed {self._cut(m.diff, settings, problem)}: "
                f"status {m.status}{outcome}. Reasoning: {reasoning}"
            )
        return "\n".join(lines)

    def _demo_pools(
        self,
        pools: dict[str, dict[str, Any]],
        schema: dict[str, Any],
        settings: OptimizerSettings,
        problem: Problem,
    ) -> str:
        props = schema.get("properties") or {}
        lines = []
        for name, pool in pools.items():
            spec = props.get(name) or {}
            lines.append(
                DEMO_POOL_NOTE.format(
                    name=name,
                    step=spec.get("genopt_step"),
                    most=spec.get("maxItems", len(pool)),
                    example=", ".join(_json(i) for i in list(pool)[:2]),
                )
            )
            for eid, demo in pool.items():
                shown = self._cut(
                    {"input": demo["input"], "output": demo["output"]}, settings, problem
                )
                lines.append(f"- {eid}: {shown}")
        return "\n".join(lines)

    # -- the interface --------------------------------------------------------------------

    def problem(
        self,
        evidence: Evidence,
        batch: list[Unit],
        memory: list[MemoryEntry],
        settings: OptimizerSettings,
        editable: list[str],
        credits: list[Credit] | None = None,
    ) -> Problem:
        schema = evidence.pipeline.schema
        values = evidence.parent_values
        instruction, code = self.instruction, self._code(evidence)
        focused = focus(credits, editable) if credits else None
        if focused is not None:
            step, editable = focused
            blamed = [c for c in credits or [] if c.step == step]
            instruction += "\n\n" + STEP_FOCUS.format(
                step=step,
                n=len(blamed),
                m=len({(c.run_id, c.item_key) for c in credits or []}),
                why=blamed[0].reason,
            )
            doc = evidence.pipeline.tasks.get(step)
            code = f"task {step} of pipeline {evidence.pipeline.name!r}: {doc or '(no docstring)'}"
            reasons = {(c.run_id, c.item_key): c.reason for c in blamed}
            batch = [_focus_unit(u, step, reasons.get((u.run_id, u.item_key))) for u in batch]
        problem = Problem(
            pipeline=evidence.pipeline.name,
            editable=editable,
            current=dict(values),
            schema=schema,
            sections=[],
            units=batch,
        )
        problem.extra["refs"] = {
            name: values[name]
            for name in editable
            if isinstance(values.get(name), str) and len(values[name]) >= REFERENCE_MIN_CHARS
        }
        variables = self._variables(schema, values, editable)
        if problem.extra["refs"]:
            variables += "\n" + REFERENCE_NOTE
        if focused is not None:
            problem.extra["focus_step"] = focused[0]
            problem.editable = editable
        sections: list[tuple[str, str]] = [
            ("#Instruction", instruction),
            ("#Code", code),
            ("#Variables", variables),
            ("#Constraints", self._constraints(schema, editable)),
        ]
        pools = {n: p for n, p in evidence.demo_pools.items() if n in editable and p}
        if pools:
            problem.extra["demo_pools"] = pools
            sections.append(
                ("#Demo candidates", self._demo_pools(pools, schema, settings, problem))
            )
        for i, unit in enumerate(batch, 1):
            sections.append((f"## Example {i} of {len(batch)} ({unit.label})", "-" * 40))
            sections.append(
                ("#Inputs", self._cut(unit.inputs or "(none recorded)", settings, problem))
            )
            sections.append(("#Others", self._steps(unit, settings, problem)))
            sections.append(
                (
                    "#Outputs",
                    self._cut(
                        unit.output if unit.output is not None else "(none recorded)",
                        settings,
                        problem,
                    ),
                )
            )
            sections.append(("#Feedback", self._feedback(unit, evidence, settings, problem)))
        mean = sum(u.value for u in batch) / len(batch) if batch else float("nan")
        unit_word = "items" if evidence.per_item else "runs"
        if evidence.binary:
            failed = sum(not evidence.passed(u.value) for u in batch)
            total_failed = round(
                evidence.population_units
                * (
                    1 - evidence.population_mean
                    if evidence.direction == "higher"
                    else evidence.population_mean
                )
            )
            aggregate = (
                f"{failed} of these {len(batch)} examples FAILED. With the current values, "
                f"{total_failed} of {evidence.population_units} {unit_word} in "
                f"{evidence.population_runs} runs failed ({evidence.kpi} mean "
                f"{evidence.population_mean:.3g})."
            )
        else:
            aggregate = (
                f"{evidence.kpi}: mean {mean:.3g} over these {len(batch)} {unit_word}; with the "
                f"current values the pipeline scored a mean of {evidence.population_mean:.3g} "
                f"over {evidence.population_units} {unit_word} in {evidence.population_runs} "
                f"runs ({'higher' if evidence.direction == 'higher' else 'lower'} is better)."
            )
        sections.append(("#Feedback (this minibatch)", aggregate))
        if settings.memory_size > 0 and memory:  # an empty section still sways a small model
            sections.append(
                ("#Memory (earlier proposals)", self._memory(memory, settings, problem))
            )
        sections.append(("#Answer", self.answer_format))
        problem.sections = sections
        return problem

    def messages(self, problem: Problem) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": problem.render()},
        ]
