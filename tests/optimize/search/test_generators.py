"""Candidate generators with scripted models: instruction drafts parsed from fenced
blocks, N calls at temperature 1.0 with the meta-prompt's examples, distribution and
ascending history; demo sets of verified experiences only, balanced across labels
(issue 14, "Tests" item 6); the combination; the OptoPrime update as a generator."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import prefect_genopt as genopt
from prefect_genopt import testing
from prefect_genopt.optimize.llm import LLMClient
from prefect_genopt.optimize.search.core import Budget, Candidate, HistoryEntry
from prefect_genopt.optimize.search.generators import (
    ANSWER_FORMAT,
    AnswerFormat,
    CandidateGenerator,
    Combination,
    DemoSets,
    Example,
    GenerationContext,
    InstructionDrafts,
    OptoPrimeUpdate,
    answer_distribution,
    combine,
    default_generators,
    evidence_demo_pools,
    parse_draft,
)
from prefect_genopt.tunables import param_set_id

PROVIDER = "search-drafts"
CURRENT = "Label the ticket: billing, bug or other."


class Params(genopt.Tunables):
    """A classifier step's params: its instruction and its demos."""

    prompt: str = genopt.prompt(CURRENT, description="the classifier's instruction", max_length=300)
    examples: list[dict] = genopt.demos(
        description="worked examples for the classifier", max_items=3, step="classify"
    )


SCHEMA = Params.schema_json()
PARENT = Params().values()
FAILED = [
    Example(f"ticket {i}: my invoice is wrong", "bug", False, expected="billing") for i in range(6)
]
PASSED = [Example(f"good {i}: the app crashes", "bug", True, expected="bug") for i in range(2)]
HISTORY = [
    HistoryEntry(f"Old instruction scored {s:.2f}.", s, 48)
    for s in (0.61, 0.40, 0.55, 0.30, 0.70, 0.52, 0.45)
]


@pytest.fixture
def model() -> Iterator[tuple[testing.ScriptedProvider, list[str]]]:
    """A scripted optimizer that answers the texts in ``answers``, in turn."""
    answers: list[str] = []
    provider = testing.register(PROVIDER, lambda call: answers.pop(0))
    yield provider, answers
    testing.unregister(PROVIDER)


def _ctx(**kw: object) -> GenerationContext:
    args: dict = {
        "pipeline": "triage",
        "parent_id": param_set_id(PARENT),
        "parent": PARENT,
        "schema": SCHEMA,
        "editable": ["prompt", "examples"],
        "step": "classify",
        "examples": FAILED + PASSED,
        "distribution": answer_distribution(["bug"] * 7 + ["other"], ["billing"] * 6 + ["bug"] * 2),
        "history": HISTORY,
        "answer_words": ["billing", "bug", "other"],
        "client": LLMClient(f"{PROVIDER}/opt", "json_schema", timeout_s=10),
        "budget": Budget(optimizer_calls=10),
        **kw,
    }
    return GenerationContext(**args)


def test_drafts_are_parsed_from_fenced_blocks_one_call_each_at_temperature_one(model) -> None:
    provider, answers = model
    answers += [
        "```\nLabel each ticket billing, bug or other by its main complaint.\n```",
        "Here is a better one:\n```text\nSay billing for money, bug for errors, other "
        "otherwise.\n```\nHope it helps!",
        "Answer with one label: billing, bug or other, and nothing else.",  # no fence
        "   ",  # empty
        "```\n" + "Label it well. " * 30 + "\n```",  # over the param's 300 characters
        f"```\n{CURRENT}\n```",  # the current value
    ]
    ctx = _ctx()
    out = InstructionDrafts(n=6).generate(ctx)
    assert len(provider.calls) == 6 and out.calls == 6 and out.tokens > 0
    assert ctx.budget.used_optimizer_calls == 6
    assert [c.temperature for c in provider.calls] == [1.0] * 6
    assert all("response_format" not in c.params for c in provider.calls)  # free text
    assert [c.values["prompt"] for c in out.candidates] == [
        "Label each ticket billing, bug or other by its main complaint.",
        "Say billing for money, bug for errors, other otherwise.",
        "Answer with one label: billing, bug or other, and nothing else.",
    ]
    for c in out.candidates:
        assert c.generator == "drafts" and c.changed == ("prompt",)
        assert c.candidate_id == param_set_id(c.values) and c.parent_id == ctx.parent_id
        assert c.values["examples"] == [] and c.meta["temperature"] == 1.0
    assert [d.reason for d in out.dropped] == ["empty", "invalid", "copy"]
    assert all(d.generator == "drafts" for d in out.dropped)


def test_the_meta_prompt_holds_examples_distribution_and_ascending_history(model) -> None:
    provider, answers = model
    answers += ["```\nA.\n```", "```\nB.\n```"]
    InstructionDrafts(n=2).generate(_ctx())
    first, second = (c.user for c in provider.calls)
    assert f"```\n{CURRENT}\n```" in first  # the current value
    assert first.count("(wrong)") == 4 and first.count("(right)") == 1
    example = "input: ticket 0: my invoice is wrong\nthe pipeline answered: bug\nexpected: billing"
    assert example in first
    assert "All answers: answered bug 7, other 1; expected billing 6, bug 2." in first
    scores = [float(s) for s in re.findall(r"^score (\d\.\d\d):", first, re.M)]
    assert scores == [0.45, 0.52, 0.55, 0.61, 0.70]  # the best 5, worst first (OPRO)
    assert "'billing', 'bug', 'other'" in first and "step 'classify'" in first
    assert "inside ``` and ```" in first and len(first) < 3000  # short
    # the next draft sees other failed examples when there are more
    shown = re.findall(r"^input: ticket (\d)", second, re.M)
    assert shown == ["4", "5", "0", "1"]


def test_drafts_stop_when_the_budget_is_spent(model) -> None:
    provider, answers = model
    answers += ["```\nA.\n```"] * 4
    ctx = _ctx(budget=Budget(optimizer_calls=2))
    out = InstructionDrafts(n=4).generate(ctx)
    assert len(provider.calls) == 2 and out.stop_reason == "optimizer-call budget of 2 spent"
    nothing = InstructionDrafts().generate(_ctx(editable=["examples"]))
    assert not nothing.candidates and nothing.notes


def test_parse_draft_is_lenient_but_not_blind() -> None:
    assert parse_draft("```markdown\nBe brief.\n```") == ("Be brief.", "")
    assert parse_draft("```Be brief.```") == ("Be brief.", "")
    assert parse_draft("Intro\n```\nopen block, never closed") == ("open block, never closed", "")
    assert parse_draft("```\nopen block", "length") == (None, "unparsable")
    assert parse_draft("") == (None, "empty")


def _pool(labels: dict[str, int]) -> dict[str, dict]:
    pool, k = {}, 0
    for label, n in labels.items():
        for _ in range(n):
            pool[f"exp_{k:02d}"] = {"id": f"exp_{k:02d}", "input": f"text {k}", "output": label}
            k += 1
    return pool


def test_demo_sets_are_balanced_seeded_and_make_no_call() -> None:
    pool = _pool({"billing": 5, "bug": 3, "other": 1})
    ctx = _ctx(client=None, demo_pools={"examples": pool}, rng=random.Random(3))
    out = DemoSets(n=6).generate(ctx)
    assert len(out.candidates) == 6 and out.calls == 0 and not out.dropped
    seen = set()
    for c in out.candidates:
        demos = c.values["examples"]
        assert c.generator == "demos" and c.changed == ("examples",)
        assert 2 <= len(demos) <= 3  # min_demos .. the param's max_items
        assert all(set(d) == {"input", "output", "experience_id"} for d in demos)
        assert all(pool[d["experience_id"]]["output"] == d["output"] for d in demos)
        labels = Counter(d["output"] for d in demos)
        assert len(labels) == len(demos)  # 3 labels, at most 3 demos: one of each
        seen.add(frozenset(d["experience_id"] for d in demos))
        assert c.candidate_id == param_set_id(c.values)
    assert len(seen) == 6  # distinct sets
    again = DemoSets(n=6).generate(
        _ctx(client=None, demo_pools={"examples": pool}, rng=random.Random(3))
    )
    assert [c.candidate_id for c in again.candidates] == [c.candidate_id for c in out.candidates]
    small = DemoSets().generate(_ctx(demo_pools={"examples": _pool({"bug": 1})}))
    assert not small.candidates and "fewer than the 2" in small.notes[0]


def test_combination_joins_the_best_draft_and_the_best_demo_set() -> None:
    ctx = _ctx(client=None)
    draft = Candidate(
        "d",
        {**PARENT, "prompt": "Say billing, bug or other."},
        "drafts",
        ctx.parent_id,
        ("prompt",),
    )
    demos = [{"input": "refund", "output": "billing", "experience_id": "exp_1"}]
    demo = Candidate("s", {**PARENT, "examples": demos}, "demos", ctx.parent_id, ("examples",))
    assert Combination().generate(ctx).notes  # nothing chosen yet
    ctx.best = {"drafts": draft, "demos": demo}
    out = Combination().generate(ctx)
    (both,) = out.candidates
    assert both.values == {"prompt": "Say billing, bug or other.", "examples": demos}
    assert both.generator == "combination" and both.changed == ("examples", "prompt")
    assert (
        both.candidate_id == param_set_id(both.values) == combine(PARENT, draft, demo).candidate_id
    )
    assert both.meta["from"] == ["d", "s"]


def test_the_built_in_generators_follow_the_interface() -> None:
    gens = [*default_generators(), Combination()]
    assert all(isinstance(g, CandidateGenerator) for g in gens)
    assert [g.name for g in gens] == ["drafts", "format", "demos", "optoprime", "combination"]


def test_answer_format_names_the_labels_once_without_a_call() -> None:
    bare = {**PARENT, "prompt": "Sort the ticket."}
    out = AnswerFormat().generate(_ctx(parent=bare, parent_id=param_set_id(bare), client=None))
    (c,) = out.candidates
    assert c.values["prompt"] == "Sort the ticket. Reply with only billing, bug or other."
    assert c.generator == "format" and c.changed == ("prompt",) and out.calls == 0
    assert c.values["examples"] == bare["examples"]  # only the instruction changes
    # the current instruction already names every label (CURRENT does): nothing to add
    named = AnswerFormat().generate(_ctx())
    assert not named.candidates and "already names every answer" in named.notes[0]
    # the step's answers are not a few labels: nothing to make
    free = AnswerFormat().generate(_ctx(answer_words=None))
    assert not free.candidates and "not a few short labels" in free.notes[0]
    # an empty instruction becomes the sentence alone
    empty = {**PARENT, "prompt": ""}
    out = AnswerFormat().generate(_ctx(parent=empty, parent_id=param_set_id(empty)))
    assert out.candidates[0].values["prompt"] == ANSWER_FORMAT.format(words="billing, bug or other")


def test_combination_may_join_the_answer_format_and_a_demo_set() -> None:
    ctx = _ctx(client=None)
    fmt = Candidate(
        "f",
        {**PARENT, "prompt": CURRENT + " Reply with only bug."},
        "format",
        ctx.parent_id,
        ("prompt",),
    )
    demos = [{"input": "refund", "output": "billing", "experience_id": "exp_1"}]
    demo = Candidate("s", {**PARENT, "examples": demos}, "demos", ctx.parent_id, ("examples",))
    ctx.best = {"format": fmt, "demos": demo}
    assert Combination().generate(ctx).notes  # the default pair is drafts and demos
    (both,) = Combination(("format", "demos")).generate(ctx).candidates
    assert both.values == {"prompt": CURRENT + " Reply with only bug.", "examples": demos}


# -- with a warehouse ---------------------------------------------------------------------

ITEMS = [
    ["T1", "my invoice is wrong", "billing"],
    ["T2", "the app crash on start", "bug"],
    ["T3", "a refund please", "billing"],
    ["T4", "thanks for the roadmap", "other"],
    ["T5", "login error again", "bug"],
    ["T6", "invoice missing", "billing"],
    ["T7", "great support, thanks", "other"],
    ["T8", "crash when saving", "bug"],
    ["T9", "hello there roadmap fans", "other"],
]
REJECT = "no_roadmap_today"


def test_demo_sets_hold_only_verified_experiences_balanced_across_labels(
    warehouse_path: Path, prefect_api: str
) -> None:
    from prefect_genopt.replay import checks, steps
    from tests.replay import pipelines

    steps.clear_cache()
    pipelines.MODEL["name"] = pipelines.keyword_model.MODEL
    # a check the roadmap tickets fail: their experiences are rejected, never demos
    genopt.check("replayer", step="classify", name=REJECT)(
        lambda inputs, output: "roadmap" not in str(inputs)
    )
    try:
        pipelines.replayer(ITEMS[:5])
        pipelines.replayer(ITEMS[5:])
        result = genopt.harvest("replayer", "correct")
    finally:
        with checks._lock:
            checks._registry["replayer"] = [
                e for e in checks._registry.get("replayer", []) if e[1] != REJECT
            ]
    assert (result.verified, result.rejected) == (7, 2)
    wh = genopt.Warehouse()
    rows = wh.sql("SELECT experience_id, status, run_id FROM experiences")
    verified = {r["experience_id"] for r in rows if r["status"] == "verified"}
    schema = pipelines.RecParams.schema_json()
    pools = evidence_demo_pools(wh, "replayer", schema, ["prompt", "examples"], None)
    assert set(pools) == {"examples"} and set(pools["examples"]) == verified
    # only the evidence pool's runs give demos
    first_run = wh.sql("SELECT run_id FROM runs ORDER BY start_time LIMIT 1")[0]["run_id"]
    mine = evidence_demo_pools(wh, "replayer", schema, ["examples"], [first_run])
    assert set(mine["examples"]) == {
        r["experience_id"] for r in rows if r["run_id"] == first_run and r["status"] == "verified"
    }
    parent = pipelines.RecParams().values()
    ctx = GenerationContext(
        pipeline="replayer",
        parent_id=param_set_id(parent),
        parent=parent,
        schema=schema,
        editable=["examples"],
        demo_pools=pools,
        rng=random.Random(0),
    )
    out = DemoSets(n=6).generate(ctx)
    assert len(out.candidates) == 6
    for c in out.candidates:
        demos = c.values["examples"]
        assert {d["experience_id"] for d in demos} <= verified
        labels = Counter(d["output"] for d in demos)
        assert max(labels.values()) - min(labels.values()) <= 1
        assert len(labels) == min(len(demos), 3)  # billing, bug and other (2 verified)


# -- the OptoPrime update, as a generator ----------------------------------------------------


def test_the_optoprime_update_is_one_generator(warehouse_path: Path, prefect_api: str) -> None:
    from prefect_genopt.optimize import OptimizerSettings
    from prefect_genopt.optimize.evidence import collect
    from tests.optimize import scripted

    scripted.knob([f"item-{i}" for i in range(6)])
    settings = OptimizerSettings(pipeline="knob", response_format="none", max_updates=1)
    wh = genopt.Warehouse()
    wh.ingest()
    evidence = collect(wh, settings)
    schema = evidence.pipeline.schema

    def ctx(mode: str, budget: Budget) -> GenerationContext:
        return GenerationContext(
            pipeline="knob",
            parent_id=evidence.parent_param_set_id,
            parent=evidence.parent_values,
            schema=schema,
            editable=["level", "note"],
            client=LLMClient(f"scripted-opt/{mode}", "none", timeout_s=10),
            budget=budget,
            evidence=evidence,
            settings=settings,
        )

    budget = Budget(optimizer_calls=5)
    out = OptoPrimeUpdate().generate(ctx("follow", budget))
    (cand,) = out.candidates
    assert cand.generator == "optoprime" and cand.changed == ("level",)
    assert cand.values["level"] == pytest.approx(scripted.OPTIMUM)
    assert cand.candidate_id == param_set_id(cand.values)
    assert budget.used_optimizer_calls == out.calls == 1 and cand.meta["reasoning"]
    empty = OptoPrimeUpdate().generate(ctx("empty", budget))
    assert not empty.candidates and [d.reason for d in empty.dropped] == ["no_change"]
    spent = OptoPrimeUpdate().generate(ctx("follow", Budget(optimizer_calls=0)))
    assert spent.stop_reason and not spent.calls
