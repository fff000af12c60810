"""The optimizer's own instruction, a Tunable improved offline from rated reflections.

Every proposal's reasoning is a reflection, and its replay gate or canary rates it
(:mod:`prefect_genopt.proposals.ratings`). Every ``K`` new rated proposals of a
pipeline (``OptimizerSettings.tune_instruction_every``, or ``genopt instruction
tune``), one LLM call rewrites the instruction OptoPrime follows for that
pipeline: it is shown the current instruction as the variable and the best- and
worst-rated reflections as the feedback. There is no canary of its own (one
proposal a night could never reach a verdict): the new instruction must keep the
problem's section names, it is stored in ``optimizer_instructions`` with its parent
and the ratings it saw, and later proposals record which instruction they used,
so their own ratings judge it.

Example:
    >>> OptimizerInstruction().instruction.startswith("You are improving the parameters")
    True
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_genopt import spool
from prefect_genopt.optimize.llm import (
    LLMCallError,
    LLMClient,
    LLMTimeout,
    ReplyError,
    parse_reply,
)
from prefect_genopt.optimize.optoprime import (
    ANSWER_FORMAT,
    INSTRUCTION,
    SYSTEM_PROMPT,
    answer_schema,
)
from prefect_genopt.optimize.validate import SuggestionError, check_suggestion
from prefect_genopt.proposals.ratings import best_and_worst, reflections
from prefect_genopt.records import row_record
from prefect_genopt.tunables import Tunables, prompt
from prefect_genopt.warehouse.schema import utcnow
from prefect_genopt.warehouse.warehouse import Warehouse, as_warehouse

__all__ = [
    "OptimizerInstruction",
    "InstructionResult",
    "current_instruction",
    "tune_instruction",
    "META_INSTRUCTION",
    "REQUIRED_SECTIONS",
]

logger = logging.getLogger("prefect_genopt.optimize")

#: what the tuning call is asked to do
META_INSTRUCTION = """\
You improve the instruction that an LLM optimizer follows when it proposes new parameter \
values for a production pipeline (#Variables holds it). Under #Feedback are past proposals \
made for this pipeline, each with its reflection (the optimizer's reasoning) and its rating: \
how much the KPI moved against the stable parameters when the proposal was tested on real or \
replayed items (best rated first, then the worst). Find what the well-rated reflections did \
that the poorly rated ones did not, and rewrite the instruction so that future proposals look \
like the well-rated ones. Keep everything the instruction says about the problem's sections \
(#Code, #Variables, #Constraints, #Inputs, #Others, #Outputs, #Feedback) and do not ask for \
another answer format."""

#: section names a tuned instruction must still mention (the problem is built with them)
REQUIRED_SECTIONS = ("#Variables", "#Feedback")
#: rated reflections shown from each end (best, worst)
SHOWN_EACH_END = 3


class OptimizerInstruction(Tunables):
    """The optimizer's own tunable: the instruction OptoPrime follows."""

    instruction: str = prompt(
        INSTRUCTION,
        description="the instruction the optimizer LLM follows for this pipeline; it must "
        "keep naming the problem's sections (#Variables, #Feedback...)",
        max_length=6000,
    )


@dataclass
class InstructionResult:
    """What one tuning attempt did."""

    status: str  # tuned | not_due | no_ratings | rejected
    reason: str
    n_ratings: int
    instruction_id: str | None = None
    instruction: str | None = None
    tokens: int = 0


def current_instruction(wh: Warehouse, pipeline: str) -> tuple[str | None, str]:
    """``(instruction_id, text)`` the optimizer follows for ``pipeline`` (the default:
    ``(None, INSTRUCTION)``)."""
    rows = wh.sql(
        "SELECT instruction_id, instruction FROM optimizer_instructions WHERE pipeline = ? "
        "ORDER BY created_at DESC LIMIT 1",
        [pipeline],
    )
    return (rows[0]["instruction_id"], rows[0]["instruction"]) if rows else (None, INSTRUCTION)


def _feedback(rated: list[dict[str, Any]]) -> str:
    best, worst = best_and_worst(rated, SHOWN_EACH_END, SHOWN_EACH_END)
    lines = []
    for label, group in (("best rated", best), ("worst rated", worst[::-1])):
        for r in group:
            rating = r["rating"]
            lines.append(
                f"- {label}: KPI {rating['relative_effect']:+.1%} against stable "
                f"({rating['outcome']} by {rating['source']}); suggested {r['suggestion']}; "
                f"reflection: {r['reflection']}"
            )
    return "\n".join(lines)


def problem_text(current: str, rated: list[dict[str, Any]]) -> str:
    """The tuning problem shown to the LLM."""
    sections = [
        ("#Instruction", META_INSTRUCTION),
        ("#Variables", f"(string) instruction = {current!r}"),
        (
            "#Constraints",
            "instruction: a string of at most 6000 characters that still names "
            + " and ".join(REQUIRED_SECTIONS),
        ),
        ("#Feedback (rated proposals)", _feedback(rated)),
        ("#Answer", ANSWER_FORMAT),
    ]
    return "\n\n".join(f"{t}\n{b}" for t, b in sections)


def tune_instruction(
    pipeline: str,
    *,
    every: int = 5,
    force: bool = False,
    model: str | None = None,
    response_format: str | None = None,
    warehouse: Warehouse | str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> InstructionResult:
    """Rewrite ``pipeline``'s optimizer instruction from its rated reflections, when due.

    Args:
        pipeline: The pipeline.
        every: Tune once this many new rated proposals arrived since the last tuning.
        force: Tune now if there is any rating at all.
        model: The litellm model (default: GENOPT_MODEL, else the embedded model).
        response_format: As in :class:`~prefect_genopt.optimize.OptimizerSettings`.
        warehouse: The warehouse (default: GENOPT_WAREHOUSE).
        progress: Called with one line per step (default: the log).
    """
    say = progress or logger.info
    wh = as_warehouse(warehouse)
    rated = list(reflections(wh, pipeline))
    n = len(rated)
    if not n:
        return InstructionResult("no_ratings", f"no rated proposal for {pipeline!r} yet", 0)
    parent_id, current = current_instruction(wh, pipeline)
    seen = wh.sql(
        "SELECT coalesce(max(n_ratings), 0) AS n FROM optimizer_instructions WHERE pipeline = ?",
        [pipeline],
    )[0]["n"]
    if not force and n - seen < every:
        return InstructionResult(
            "not_due", f"{n - seen} new rated proposal(s) since the last tuning; due at {every}", n
        )
    client = LLMClient.configured(model, response_format, max_tokens=2048)
    schema = OptimizerInstruction.schema_json()
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": problem_text(current, rated)},
    ]
    say(f"tuning the optimizer instruction of {pipeline!r} from {n} rated proposal(s)")
    try:
        reply = client.complete(messages, answer_schema(schema, ["instruction"]))
    except (LLMTimeout, LLMCallError) as exc:
        return InstructionResult("rejected", f"LLM call failed: {exc}", n)
    tokens = reply.input_tokens + reply.output_tokens
    try:
        reasoning, suggestion = parse_reply(reply.text)
        checked = check_suggestion(suggestion, schema, {"instruction": current}, ["instruction"])
    except (ReplyError, SuggestionError) as exc:
        return InstructionResult("rejected", f"unusable answer: {exc}", n, tokens=tokens)
    text = checked.values["instruction"]
    missing = [s for s in REQUIRED_SECTIONS if s not in text]
    if missing:
        return InstructionResult(
            "rejected", f"the new instruction drops {', '.join(missing)}", n, tokens=tokens
        )
    iid = "oi_" + hashlib.sha256(f"{pipeline}\0{text}".encode()).hexdigest()[:16]
    spool.append(
        [
            row_record(
                "optimizer_instructions",
                {
                    "instruction_id": iid,
                    "pipeline": pipeline,
                    "created_at": utcnow().isoformat(),
                    "instruction": text,
                    "parent_id": parent_id,
                    "n_ratings": n,
                    "reasoning": reasoning[:4000],
                    "model": client.model,
                },
            )
        ],
        wh.spool_dir,
    )
    wh.ingest_if_free()
    say(f"  new instruction {iid} ({len(text)} chars)")
    return InstructionResult("tuned", reasoning, n, iid, text, tokens)
