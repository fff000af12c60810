"""Candidate generators: many cheap candidates for the search to choose from.

A generator is a small class behind one interface, :class:`CandidateGenerator` (a
``typing.Protocol`` modelled on GEPA's adapter protocol: a name and one method), so a user
can add one: ``generate(ctx)`` reads a :class:`GenerationContext` (the parent, the schema,
tonight's editable params of one step, examples, the scored history, demo pools, the
optimizer model, a seeded ``rng``, the night's :class:`~.core.Budget`) and returns a
:class:`GeneratorOutput` (candidates, dropped drafts with their reasons, the optimizer
calls, tokens and USD it spent). Every candidate's full values are checked against the
Tunables schema (:func:`~prefect_genopt.optimize.validate.check_suggestion`; an invalid
one is ``Dropped("invalid")``, one equal to the parent ``Dropped("copy")``) and its id is
the param set id of its values (:func:`prefect_genopt.tunables.param_set_id`).

Built in:

* :class:`InstructionDrafts` (``drafts``): N drafts of a prompt param from the optimizer
  model at temperature 1.0, one call each, with the short task-level meta-prompt
  :data:`DRAFT_PROMPT` (the current value; 4 failed examples and 1 passed, as input /
  what the pipeline answered / expected or critique; the answer distribution against the
  expected one; the best past values with their selection scores, ascending, as OPRO
  does). The answer is free text in a fenced block, not JSON (:func:`parse_draft`).
* :class:`DemoSets` (``demos``): for each ``genopt.demos`` param, balanced sets of 2-4
  verified experiences drawn with the seeded ``rng`` (:func:`draw_demo_sets`); no LLM call.
* :class:`AnswerFormat` (``format``): for a step whose answer is parsed (the evidence's
  expected values are a few short labels), the current instruction plus one sentence
  naming the labels (:data:`ANSWER_FORMAT`); no LLM call. A small model's first errors
  are format and bias (issue 14): prose where a label was parsed, one label for every
  item.
* :class:`Combination` (``combination``): the best instruction candidate (a draft or the
  answer format) and the best demo set, chosen by the caller after selection, in one
  candidate (:func:`combine`).
* :class:`OptoPrimeUpdate` (``optoprime``): today's single-shot OptoPrime update (the
  runner's attempt: one call, one retry on an unusable answer) as one generator among
  the others.

Example:
    >>> parse_draft("Sure.\\n```text\\nLabel the ticket billing, bug or other.\\n```")
    ('Label the ticket billing, bug or other.', '')
    >>> answer_distribution(["yes"] * 33 + ["no"] * 17, ["yes"] * 25 + ["no"] * 25)
    'answered yes 33, no 17; expected yes 25, no 25'
"""

from __future__ import annotations

import copy
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from prefect_genopt.optimize.llm import (
    Budget as TokenBudget,
)
from prefect_genopt.optimize.llm import (
    BudgetExhausted,
    LLMCallError,
    LLMClient,
    LLMTimeout,
)
from prefect_genopt.optimize.optoprime import Optimizer, OptoPrime, _focus_unit
from prefect_genopt.optimize.search.core import (
    Budget,
    Candidate,
    Dropped,
    HistoryEntry,
    ProgressLine,
    eta_text,
)
from prefect_genopt.optimize.search.filters import has_word, length_limit
from prefect_genopt.optimize.validate import SuggestionError, check_suggestion
from prefect_genopt.redaction import redact, truncate
from prefect_genopt.replay.experiences import verified_demos
from prefect_genopt.tunables import KIND_KEY, canonical_json, param_set_id

if TYPE_CHECKING:
    from prefect_genopt.optimize.config import OptimizerSettings
    from prefect_genopt.optimize.evidence import Evidence, Unit
    from prefect_genopt.optimize.optoprime import MemoryEntry
    from prefect_genopt.optimize.step_credit import Credit
    from prefect_genopt.warehouse import Warehouse

__all__ = [
    "DRAFT_SYSTEM",
    "DRAFT_PROMPT",
    "Example",
    "GenerationContext",
    "GeneratorOutput",
    "CandidateGenerator",
    "InstructionDrafts",
    "DemoSets",
    "AnswerFormat",
    "ANSWER_FORMAT",
    "Combination",
    "OptoPrimeUpdate",
    "make_candidate",
    "combine",
    "parse_draft",
    "draw_demo_sets",
    "answer_distribution",
    "examples_from_units",
    "examples_from_evidence",
    "evidence_demo_pools",
    "default_generators",
]

# -- the drafts' meta-prompt (short, concrete: written for a 1.5B model as much as a large one)

DRAFT_SYSTEM = (
    "You improve the instruction a language model follows in one step of a pipeline. "
    "You answer with the new instruction only, inside ``` and ```."
)

DRAFT_PROMPT = """\
Improve the instruction of step {step} of the pipeline {pipeline}.
What the instruction is for: {description}

The current instruction:
```
{current}
```
{history}
How the pipeline did with the current instruction:
{examples}
{distribution}
Write one new instruction that would get these examples right. State a general rule; do \
not copy the examples. Keep it short: at most {max_chars} characters.{answer_words}
Answer with the new instruction only, inside ``` and ```."""

#: the scored history (OPRO): the best past values, worst first
HISTORY_BLOCK = "\nEarlier instructions and their scores ({better} is better), worst first:\n"
HISTORY_ENTRY = "score {score:.2f}:\n```\n{value}\n```\n"
EXAMPLE = "Example {i} ({verdict})\ninput: {input}\nthe pipeline answered: {output}\n"
DISTRIBUTION_LINE = "All answers: {distribution}.\n"
ANSWER_WORDS_NOTE = " The step's answer is read by a program: it must still answer with {words}."

#: the sentence :class:`AnswerFormat` appends to a parsed step's instruction
ANSWER_FORMAT = "Reply with only {words}."

#: characters of each example's input, answer and expected value in the meta-prompt
EXAMPLE_CHARS = 300


# -- the context, the output, the interface ---------------------------------------------


@dataclass(frozen=True)
class Example:
    """One unit as the drafts show it: its input, what the pipeline answered, and what
    was expected (the right answer) and/or the critique; ``passed`` says how it went."""

    input: str
    output: str
    passed: bool
    expected: str | None = None
    critique: str | None = None


def _quiet(_line: str) -> None:
    return None


@dataclass
class GenerationContext:
    """Everything a generator may read for one night.

    Attributes:
        pipeline: The pipeline.
        parent_id: The parent param set's id.
        parent: The parent's full values.
        schema: The Tunables JSON schema (from the warehouse).
        editable: Tonight's editable params (one step's).
        step: The step they belong to (the task credit blamed), if known.
        direction: ``higher`` or ``lower``: which KPI values are better.
        examples: Failed and passed units of the evidence pool, worst first.
        distribution: The answer distribution line (:func:`answer_distribution`).
        history: Past values with their measured selection scores (any order).
        demo_pools: demos param -> {experience id: verified demo} (the evidence pool's).
        answer_words: The words a parsed step's answer must hold (the labels), or None.
        client: The optimizer model.
        rng: The night's seeded random generator.
        budget: The night's budget (generators charge their optimizer calls).
        progress: Called with one line per step.
        best: Generator name -> its best candidate after selection (for
            :class:`Combination`).
        evidence, batch, memory, settings, credits: The single-shot path's inputs
            (:class:`OptoPrimeUpdate`).
    """

    pipeline: str
    parent_id: str
    parent: dict[str, Any]
    schema: dict[str, Any]
    editable: list[str]
    step: str | None = None
    direction: str = "higher"
    examples: list[Example] = field(default_factory=list)
    distribution: str = ""
    history: list[HistoryEntry] = field(default_factory=list)
    demo_pools: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    answer_words: list[str] | None = None
    client: LLMClient | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    budget: Budget = field(default_factory=Budget)
    progress: Callable[[str], None] = _quiet
    best: dict[str, Candidate] = field(default_factory=dict)
    evidence: Evidence | None = None
    batch: list[Unit] = field(default_factory=list)
    memory: list[MemoryEntry] = field(default_factory=list)
    settings: OptimizerSettings | None = None
    credits: list[Credit] | None = None

    def spec(self, name: str) -> dict[str, Any]:
        """The schema of one param."""
        return dict((self.schema.get("properties") or {}).get(name) or {})

    def fields_of_kind(self, kind: str) -> list[str]:
        """Tonight's editable params of a Tunables kind (``prompt``, ``demos``...)."""
        return [n for n in self.editable if self.spec(n).get(KIND_KEY) == kind]


@dataclass
class GeneratorOutput:
    """What one generator made and spent."""

    candidates: list[Candidate] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    calls: int = 0
    tokens: int = 0
    usd: float | None = None
    #: why the generator stopped early (a budget, a failed provider), if it did
    stop_reason: str | None = None
    #: plain sentences for the night's log ("no demos param tonight")
    notes: list[str] = field(default_factory=list)

    def add(self, made: Candidate | Dropped) -> None:
        """Keep a candidate, or count a dropped draft."""
        if isinstance(made, Candidate):
            self.candidates.append(made)
        else:
            self.dropped.append(made)

    def spend(self, calls: int, tokens: int, usd: float | None) -> None:
        """Count optimizer calls and their tokens and cost (None: unpriced)."""
        self.calls += calls
        self.tokens += tokens
        if usd is not None:
            self.usd = (self.usd or 0.0) + usd


@runtime_checkable
class CandidateGenerator(Protocol):
    """The interface of a candidate generator (modelled on GEPA's adapter protocol).

    Example:
        >>> class Nothing:
        ...     name = "nothing"
        ...     def generate(self, ctx: GenerationContext) -> GeneratorOutput:
        ...         return GeneratorOutput(notes=["nothing to do"])
        >>> isinstance(Nothing(), CandidateGenerator)
        True
    """

    name: str

    def generate(self, ctx: GenerationContext) -> GeneratorOutput:
        """Candidates for tonight (charge ``ctx.budget`` for every optimizer call, stop
        when it is exhausted, never raise for an unusable answer: drop it with a reason)."""
        ...


# -- helpers every generator uses --------------------------------------------------------


def make_candidate(
    ctx: GenerationContext,
    change: dict[str, Any],
    generator: str,
    meta: dict[str, Any] | None = None,
) -> Candidate | Dropped:
    """A candidate of ``change`` over the parent, checked against the schema; or why not.

    Example:
        >>> ctx = GenerationContext("p", "ps_parent", {"t": 0.5}, {"properties": {
        ...     "t": {"type": "number", "maximum": 1}}}, ["t"])
        >>> make_candidate(ctx, {"t": 0.7}, "mine").values
        {'t': 0.7}
        >>> [make_candidate(ctx, {"t": t}, "mine").reason for t in (2, 0.5)]
        ['invalid', 'copy']
    """
    try:
        checked = check_suggestion(change, ctx.schema, ctx.parent, ctx.editable)
    except SuggestionError as exc:
        reason = "copy" if exc.kind == "no_change" else "invalid"
        value = next(iter(change.values())) if len(change) == 1 else change
        return Dropped(generator, reason, str(exc)[:300], value)
    return Candidate(
        candidate_id=param_set_id(checked.values),
        values=checked.values,
        generator=generator,
        parent_id=ctx.parent_id,
        changed=tuple(sorted(checked.diff)),
        meta=dict(meta or {}),
    )


def combine(parent: dict[str, Any], a: Candidate, b: Candidate) -> Candidate:
    """The union of two candidates' changes over ``parent`` (on a param both change,
    ``b``'s value wins), as a ``combination`` candidate.

    Example:
        >>> a = Candidate("a", {"p": "new", "d": []}, "drafts", "ps_0", ("p",))
        >>> b = Candidate("b", {"p": "old", "d": [1]}, "demos", "ps_0", ("d",))
        >>> c = combine({"p": "old", "d": []}, a, b)
        >>> c.values, c.changed, c.generator, c.meta["from"]
        ({'p': 'new', 'd': [1]}, ('d', 'p'), 'combination', ['a', 'b'])
    """
    values = dict(parent)
    for cand in (a, b):
        for name, value in cand.values.items():
            if name not in parent or value != parent[name] or name in cand.changed:
                values[name] = value
    changed = tuple(sorted(n for n, v in values.items() if n not in parent or v != parent[n]))
    return Candidate(
        candidate_id=param_set_id(values),
        values=values,
        generator="combination",
        parent_id=a.parent_id,
        changed=changed,
        meta={"from": [a.candidate_id, b.candidate_id]},
    )


_FENCE = "```"


def parse_draft(text: str, finish_reason: str | None = None) -> tuple[str | None, str]:
    """``(draft, "")`` from an answer, or ``(None, reason)`` (``empty``, ``unparsable``).

    Lenient: the first fenced block (a one-word language tag on the fence's line is
    dropped; a block the answer never closes runs to the end, unless the answer was cut
    at the token limit); without a fence, the whole text stripped, less a first line
    that only introduces it ("Here is the new instruction:").

    Example:
        >>> parse_draft("```\\nBe brief.\\n``` and more")
        ('Be brief.', '')
        >>> parse_draft("Here is the improved instruction:\\nAnswer yes or no.")
        ('Answer yes or no.', '')
        >>> parse_draft("```\\n\\n```"), parse_draft("```\\nAnswer yes", "length")
        ((None, 'empty'), (None, 'unparsable'))
    """
    text = (text or "").strip()
    if not text:
        return None, "empty"
    start = text.find(_FENCE)
    if start >= 0:
        body = text[start + len(_FENCE) :]
        first, nl, rest = body.partition("\n")
        if nl and re.fullmatch(r"[A-Za-z0-9_+-]*\s*", first):
            body = rest  # a language tag (or nothing) on the fence's line
        end = body.find(_FENCE)
        if end < 0 and finish_reason == "length":
            return None, "unparsable"
        draft = (body if end < 0 else body[:end]).strip()
    else:
        lines = text.splitlines()
        if len(lines) > 1 and lines[0].rstrip().endswith(":"):
            lines = lines[1:]
        draft = "\n".join(lines).strip()
    return (draft, "") if draft else (None, "empty")


def _show(text: Any, limit: int = EXAMPLE_CHARS) -> str:
    """A recorded value as the drafts show it: a single argument's value, a JSON string
    unquoted, else compact JSON; cut at ``limit`` with a mark."""
    value = text
    if isinstance(text, str):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    return truncate(shown.strip(), limit)


def _label(value: Any) -> str:
    """An answer as a label: a string stripped (a JSON string unquoted), else its JSON."""
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
            if isinstance(parsed, str):
                value = parsed
        except orjson.JSONDecodeError:
            pass
    return value.strip() if isinstance(value, str) else canonical_json(value).decode()


def answer_distribution(answered: Sequence[Any], expected: Sequence[Any]) -> str:
    """One line: how often each answer was given, against how often it was expected.

    Labels are ordered by how often they were expected, then given, then by name.

    Example:
        >>> answer_distribution(['"No"', "No", "Yes"], ["Yes", "No", "Yes"])
        'answered Yes 1, No 2; expected Yes 2, No 1'
        >>> answer_distribution(["a"], [])
        'answered a 1'
    """
    got = Counter(_label(a) for a in answered)
    want = Counter(_label(e) for e in expected)
    order = sorted(set(got) | set(want), key=lambda k: (-want[k], -got[k], k))

    def line(counts: Counter[str]) -> str:
        return ", ".join(f"{k} {counts[k]}" for k in order if counts[k])

    parts = [f"answered {line(got)}"] if got else []
    if want:
        parts.append(f"expected {line(want)}")
    return "; ".join(parts)


def examples_from_units(
    units: Sequence[Unit],
    *,
    passed: Callable[[float], bool],
    expected: Mapping[tuple[str, str | None], str] | None = None,
    step: str | None = None,
) -> list[Example]:
    """Evidence units as examples: the ``step``'s own input and output when a step is
    named (else the unit's), the expected answer where known, the critiques."""
    out = []
    for u in units:
        seen = _focus_unit(u, step, None) if step else u
        critique = "; ".join(c for c in u.comments if c) or None
        out.append(
            Example(
                input=_show(seen.inputs or ""),
                output=_show(seen.output if seen.output is not None else ""),
                passed=passed(u.value),
                expected=(expected or {}).get((u.run_id, u.item_key)),
                critique=critique,
            )
        )
    return out


def examples_from_evidence(
    wh: Warehouse,
    evidence: Evidence,
    units: Sequence[Unit] | None = None,
    step: str | None = None,
) -> list[Example]:
    """:func:`examples_from_units` of ``units`` (default: the evidence's), with the expected
    answers of their feedback; a unit passed when its 0/1 KPI is a pass, or when a graded
    KPI is at least as good as the population's mean."""
    from prefect_genopt.optimize.step_credit import _expected_and_step_feedback

    chosen = list(evidence.units if units is None else units)
    expected, _ = _expected_and_step_feedback(wh, evidence, chosen) if chosen else ({}, {})
    mean, higher = evidence.population_mean, evidence.direction == "higher"

    def passed(v: float) -> bool:
        if evidence.binary:
            return evidence.passed(v)
        return v >= mean if higher else v <= mean

    return examples_from_units(chosen, passed=passed, expected=expected, step=step)


def evidence_demo_pools(
    wh: Warehouse,
    pipeline: str,
    schema: dict[str, Any],
    editable: Sequence[str],
    run_ids: Sequence[str] | None,
    *,
    limit: int = 200,
) -> dict[str, dict[str, dict[str, Any]]]:
    """For each editable ``demos`` param tied to a step: the step's verified experiences
    (:func:`prefect_genopt.replay.experiences.verified_demos`, newest first, one per
    input) harvested from ``run_ids`` (the evidence pool; None: any run), by id.

    Demos from the selection or confirmation runs would show the model the very items it
    is scored on, so the night passes the evidence pool's runs."""
    props = schema.get("properties") or {}
    pools: dict[str, dict[str, dict[str, Any]]] = {}
    for name in editable:
        spec = props.get(name) or {}
        if spec.get(KIND_KEY) != "demos" or not spec.get("genopt_step"):
            continue
        demos = verified_demos(
            pipeline, spec["genopt_step"], limit=limit, warehouse=wh, run_ids=run_ids
        )
        pools[name] = {d["id"]: d for d in demos}
    return pools


# -- instruction drafts ------------------------------------------------------------------


def _free_text(client: LLMClient) -> LLMClient:
    """The client asking for plain text: a JSON response format would force JSON."""
    if client.response_format == "none":
        return client
    plain = copy.copy(client)
    plain.response_format = "none"
    return plain


class InstructionDrafts:
    """N drafts of a prompt param from the optimizer model (see the module docstring).

    Args:
        n: Drafts (one optimizer call each).
        temperature: The calls' temperature (above 0: the drafts differ).
        failed: Failed examples shown per draft.
        passed: Passed examples shown per draft.
        history: Best past values shown (worst of them first).
    """

    name = "drafts"

    def __init__(
        self,
        n: int = 4,
        temperature: float = 1.0,
        *,
        failed: int = 4,
        passed: int = 1,
        history: int = 5,
    ) -> None:
        self.n = n
        self.temperature = temperature
        self.failed = failed
        self.passed = passed
        self.history = history

    def _examples(self, ctx: GenerationContext, i: int) -> list[Example]:
        """Draft ``i``'s examples: the failed ones rotate from draft to draft (each draft
        sees others when the evidence has more), then the passed ones."""
        bad = [e for e in ctx.examples if not e.passed]
        good = [e for e in ctx.examples if e.passed]
        shown = []
        for pool, k in ((bad, self.failed), (good, self.passed)):
            take = min(k, len(pool))
            start = (i * take) % len(pool) if pool else 0
            shown += (pool[start:] + pool[:start])[:take]
        return shown

    def prompt(self, ctx: GenerationContext, name: str, i: int = 0) -> str:
        """The meta-prompt of draft ``i`` for param ``name``."""
        better = "higher" if ctx.direction == "higher" else "lower"
        mine = [h for h in ctx.history if h.field in (None, name) and isinstance(h.value, str)]
        best = sorted(mine, key=lambda h: h.score, reverse=better == "higher")[: self.history]
        shown = sorted(best, key=lambda h: h.score, reverse=better == "lower")  # worst first
        history = ""
        if shown:
            history = HISTORY_BLOCK.format(better=better) + "".join(
                HISTORY_ENTRY.format(score=h.score, value=h.value.strip()) for h in shown
            )
        lines = []
        for k, e in enumerate(self._examples(ctx, i), 1):
            text = EXAMPLE.format(
                i=k, verdict="right" if e.passed else "wrong", input=e.input, output=e.output
            )
            if e.expected is not None:
                text += f"expected: {_show(e.expected)}\n"
            if e.critique:
                text += f"critique: {truncate(e.critique, EXAMPLE_CHARS)}\n"
            lines.append(text)
        words = ctx.answer_words or []
        return redact(
            DRAFT_PROMPT.format(
                step=repr(ctx.step) if ctx.step else "(the pipeline's)",
                pipeline=repr(ctx.pipeline),
                description=ctx.spec(name).get("description") or name,
                current=str(ctx.parent.get(name) or "").strip(),
                max_chars=length_limit(str(ctx.parent.get(name) or "").strip()),
                history=history,
                examples="\n".join(lines) if lines else "(no example recorded)\n",
                distribution=DISTRIBUTION_LINE.format(distribution=ctx.distribution)
                if ctx.distribution
                else "",
                answer_words=ANSWER_WORDS_NOTE.format(words=", ".join(map(repr, words)))
                if words
                else "",
            )
        )

    def messages(self, ctx: GenerationContext, name: str, i: int = 0) -> list[dict[str, str]]:
        """The chat messages of draft ``i``."""
        return [
            {"role": "system", "content": DRAFT_SYSTEM},
            {"role": "user", "content": self.prompt(ctx, name, i)},
        ]

    def generate(self, ctx: GenerationContext) -> GeneratorOutput:
        out = GeneratorOutput()
        fields = ctx.fields_of_kind("prompt")
        if not fields or self.n <= 0:
            out.notes.append("drafts: no prompt param is editable tonight")
            return out
        if ctx.client is None:
            out.notes.append("drafts: no optimizer model")
            return out
        client = _free_text(ctx.client)
        started = time.monotonic()

        def say(i: int, name: str, what: str) -> None:
            eta = (time.monotonic() - started) / (i + 1) * (self.n - i - 1)
            ctx.progress(
                ProgressLine(
                    f"draft {i + 1}/{self.n} of {name}: {what}, ETA {eta_text(eta)}",
                    stage="drafts",
                    generator=self.name,
                    done=i + 1,
                    total=self.n,
                    eta_s=eta,
                )
            )

        for i in range(self.n):
            stop = ctx.budget.optimizer_spent()
            if stop:
                out.stop_reason = stop
                break
            name = fields[i % len(fields)]
            try:
                reply = client.complete(self.messages(ctx, name, i), None, self.temperature)
            except LLMTimeout as exc:
                ctx.budget.charge_optimizer(1)
                out.spend(1, 0, None)
                out.dropped.append(Dropped(self.name, "timeout", str(exc)[:300]))
                continue
            except LLMCallError as exc:
                out.stop_reason = f"optimizer call failed: {exc}"
                break
            ctx.budget.charge_optimizer(1, reply.cost_usd or 0.0)
            out.spend(1, reply.input_tokens + reply.output_tokens, reply.cost_usd)
            draft, why = parse_draft(reply.text, reply.finish_reason)
            if draft is None:
                detail = "cut off at the token limit" if why == "unparsable" else "no draft"
                out.dropped.append(Dropped(self.name, why, detail, reply.text[:2000]))
                say(i, name, f"dropped ({why})")
                continue
            made = make_candidate(
                ctx,
                {name: draft},
                self.name,
                {"draft": i + 1, "field": name, "temperature": self.temperature},
            )
            out.add(made)
            say(i, name, f"{len(draft)} chars" if isinstance(made, Candidate) else made.reason)
        return out


# -- demo sets ---------------------------------------------------------------------------


def draw_demo_sets(
    pool: Mapping[str, Mapping[str, Any]],
    *,
    n: int,
    min_demos: int,
    max_demos: int,
    rng: random.Random,
) -> list[list[str]]:
    """Up to ``n`` distinct sets of experience ids, each of ``min_demos``..``max_demos``
    (seeded) drawn from ``pool`` balanced across labels (the demos' outputs): labels take
    turns in a shuffled order, so the counts of two labels in a set differ by at most one
    unless a label runs out.

    Example:
        >>> pool = {f"e{i}": {"output": "yes" if i < 6 else "no"} for i in range(8)}
        >>> sets = draw_demo_sets(pool, n=4, min_demos=2, max_demos=4, rng=random.Random(0))
        >>> counts = [Counter(pool[e]["output"] for e in s) for s in sets]
        >>> [(c["yes"], c["no"]) for c in counts]
        [(2, 1), (2, 2), (2, 2), (2, 2)]
    """
    by_label: dict[str, list[str]] = {}
    for eid in sorted(pool):
        by_label.setdefault(_label(pool[eid].get("output")), []).append(eid)
    most = min(max_demos, len(pool))
    if most < min_demos or n <= 0:
        return []
    labels = sorted(by_label)
    sets: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for _ in range(n * 20):
        if len(sets) >= n:
            break
        k = rng.randint(min_demos, most)
        queues = {lab: rng.sample(by_label[lab], len(by_label[lab])) for lab in labels}
        order = rng.sample(labels, len(labels))
        picked: list[str] = []
        while len(picked) < k:
            took = False
            for lab in order:
                if queues[lab] and len(picked) < k:
                    picked.append(queues[lab].pop())
                    took = True
            if not took:
                break
        key = frozenset(picked)
        if key not in seen:
            seen.add(key)
            sets.append(picked)
    return sets


class DemoSets:
    """Balanced demo sets for each ``genopt.demos`` param, from verified experiences.

    Args:
        n: Sets per demos param.
        min_demos: Fewest demos in a set.
        max_demos: Most demos in a set (and never over the param's ``max_items``).
    """

    name = "demos"

    def __init__(self, n: int = 6, min_demos: int = 2, max_demos: int = 4) -> None:
        if not 1 <= min_demos <= max_demos:
            raise ValueError(f"need 1 <= min_demos <= max_demos, got {min_demos}, {max_demos}")
        self.n = n
        self.min_demos = min_demos
        self.max_demos = max_demos

    def generate(self, ctx: GenerationContext) -> GeneratorOutput:
        from prefect_genopt.optimize.runner import resolve_demos  # the runner uses the search

        out = GeneratorOutput()
        fields = ctx.fields_of_kind("demos")
        if not fields:
            out.notes.append("demos: no demos param is editable tonight")
        for name in fields:
            pool = ctx.demo_pools.get(name) or {}
            most = min(self.max_demos, int(ctx.spec(name).get("maxItems", self.max_demos)))
            sets = draw_demo_sets(
                pool, n=self.n, min_demos=self.min_demos, max_demos=most, rng=ctx.rng
            )
            if not sets:
                out.notes.append(
                    f"demos: {name} has {len(pool)} verified experience(s) in the evidence "
                    f"pool, fewer than the {self.min_demos} a set needs"
                )
                continue
            for k, ids in enumerate(sets, 1):
                demos = resolve_demos({name: ids}, {name: pool})[name]
                labels = Counter(_label(d["output"]) for d in demos)
                out.add(
                    make_candidate(
                        ctx,
                        {name: demos},
                        self.name,
                        {"demo_set": k, "field": name, "experience_ids": ids, "labels": labels},
                    )
                )
            ctx.progress(f"demos: {len(sets)} set(s) for {name} from {len(pool)} experiences")
        return out


# -- the answer format --------------------------------------------------------------------


def or_list(words: Sequence[str]) -> str:
    """Words joined for a sentence.

    Example:
        >>> or_list(["Yes", "No"]), or_list(["billing", "bug", "other"]), or_list(["x"])
        ('Yes or No', 'billing, bug or other', 'x')
    """
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


class AnswerFormat:
    """The current instruction and one sentence naming the answers a parsed step's
    program reads (:data:`ANSWER_FORMAT`), for each editable prompt param; no LLM call.

    Nothing is made when the step's answers are not a few short labels
    (``ctx.answer_words`` is None) or when the instruction already names every label.

    Example:
        >>> ctx = GenerationContext("p", "ps_parent", {"prompt": "Answer the question."},
        ...     {"properties": {"prompt": {"type": "string", "genopt_kind": "prompt"}}},
        ...     ["prompt"], answer_words=["No", "Yes"])
        >>> AnswerFormat().generate(ctx).candidates[0].values["prompt"]
        'Answer the question. Reply with only No or Yes.'
    """

    name = "format"

    def generate(self, ctx: GenerationContext) -> GeneratorOutput:
        out = GeneratorOutput()
        words = ctx.answer_words or []
        if not words:
            out.notes.append("format: the step's answers are not a few short labels")
            return out
        for name in ctx.fields_of_kind("prompt"):
            current = ctx.parent.get(name)
            if not isinstance(current, str):
                continue
            if all(has_word(current, [w]) for w in words):
                out.notes.append(f"format: {name} already names every answer")
                continue
            sentence = ANSWER_FORMAT.format(words=or_list(words))
            value = f"{current.rstrip()} {sentence}" if current.strip() else sentence
            out.add(make_candidate(ctx, {name: value}, self.name, {"field": name}))
        return out


# -- the combination ----------------------------------------------------------------------


class Combination:
    """The best candidates of two generators in one (default: the best draft with the
    best demo set), from ``ctx.best``, which the caller fills after selection."""

    name = "combination"

    def __init__(self, between: tuple[str, str] = ("drafts", "demos")) -> None:
        self.between = between

    def generate(self, ctx: GenerationContext) -> GeneratorOutput:
        out = GeneratorOutput()
        a, b = (ctx.best.get(g) for g in self.between)
        if a is None or b is None:
            missing = [g for g in self.between if g not in ctx.best]
            out.notes.append(f"combination: no best {' or '.join(missing)} candidate")
            return out
        both = combine(ctx.parent, a, b)
        made = make_candidate(
            ctx, {n: both.values[n] for n in both.changed}, self.name, dict(both.meta)
        )
        out.add(made)
        return out


# -- the single-shot OptoPrime update --------------------------------------------------------


class OptoPrimeUpdate:
    """Today's OptoPrime update (``genopt.Optimizer``: OptoPrime by default) as one
    generator: the evidence's problem, one call and at most one retry on an unusable
    answer (the runner's attempt, reused), the suggestion checked against the schema.

    Needs ``ctx.evidence``, ``ctx.settings`` and ``ctx.client``; uses ``ctx.batch`` (else
    the evidence's first minibatch), ``ctx.memory`` and ``ctx.credits``. The retry, when
    there is one, is made even if the first call spent the last optimizer call.
    """

    name = "optoprime"

    def __init__(self, optimizer: Optimizer | None = None) -> None:
        self.optimizer = optimizer or OptoPrime()

    def generate(self, ctx: GenerationContext) -> GeneratorOutput:
        # the runner will call the search: its attempt is imported when used, not at load
        from prefect_genopt.optimize.runner import _attempt

        out = GeneratorOutput()
        if ctx.evidence is None or ctx.settings is None or ctx.client is None:
            out.notes.append("optoprime: needs the evidence, the settings and a client")
            return out
        stop = ctx.budget.optimizer_spent()
        if stop:
            out.stop_reason = stop
            return out
        evidence = replace(
            ctx.evidence,
            parent_values=dict(ctx.parent),
            demo_pools=ctx.demo_pools or ctx.evidence.demo_pools,
        )
        batch = ctx.batch or (evidence.minibatches[0] if evidence.minibatches else evidence.units)
        problem = self.optimizer.problem(
            evidence, list(batch), ctx.memory, ctx.settings, list(ctx.editable), ctx.credits
        )
        usd_left = ctx.budget.usd_left()
        tokens = TokenBudget(max_tokens=None, max_usd=usd_left)
        try:
            upd = _attempt(ctx.client, self.optimizer, problem, tokens, ctx.settings, ctx.progress)
        except BudgetExhausted as exc:
            out.stop_reason = f"budget exhausted: {exc}"
            return out
        except LLMCallError as exc:
            out.stop_reason = f"optimizer call failed: {exc}"
            return out
        n_in, n_out = upd.tokens
        ctx.budget.charge_optimizer(len(upd.replies), upd.cost or 0.0)
        out.spend(len(upd.replies), n_in + n_out, upd.cost)
        if upd.status == "proposed" and upd.checked is not None:
            values = upd.checked.values
            out.add(
                Candidate(
                    candidate_id=param_set_id(values),
                    values=values,
                    generator=self.name,
                    parent_id=ctx.parent_id,
                    changed=tuple(sorted(upd.checked.diff)),
                    meta={
                        "reasoning": upd.reasoning,
                        "attempts": len(upd.replies),
                        "focus_step": problem.extra.get("focus_step"),
                    },
                )
            )
        else:
            why = upd.reason or ""
            reason = (
                "no_change"
                if upd.status == "no_change"
                else "timeout"
                if why.startswith("timeout")
                else "unparsable"
                if why.startswith("unparsable")
                else "invalid"
            )
            out.dropped.append(Dropped(self.name, reason, why[:300], upd.suggestion))
        ctx.progress(
            f"optoprime: {len(out.candidates)} candidate(s), {len(out.dropped)} dropped "
            f"in {len(upd.replies)} call(s)"
        )
        return out


def default_generators(
    *,
    n_drafts: int = 4,
    draft_temperature: float = 1.0,
    n_demo_sets: int = 6,
    optimizer: Optimizer | None = None,
) -> list[CandidateGenerator]:
    """The built-in generators of a night, before selection (the combination comes after,
    from the selection's best draft and demo set)."""
    return [
        InstructionDrafts(n=n_drafts, temperature=draft_temperature),
        AnswerFormat(),
        DemoSets(n=n_demo_sets),
        OptoPrimeUpdate(optimizer),
    ]
