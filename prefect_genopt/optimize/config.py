"""The optimizer's settings: the hidden choices of an LLM optimizer, made explicit.

"The Challenges of Optimizing Machine Learning Pipelines with LLMs" names the
choices every optimizer makes silently: what it starts from and may edit, how
much of each execution it sees, how many executions at once, what it remembers,
how many updates it may make and at what cost. Here each is a validated field,
and every proposal records the whole :class:`OptimizerSettings` it was made with,
so two settings can be compared on the same evidence.

Example:
    >>> s = OptimizerSettings(pipeline="triage", minibatch_size=3)
    >>> s.credit_horizon.max_value_chars, s.starting_artifact.start_from
    (400, 'stable')
    >>> s.search, s.selection_items, s.confirmation_items, s.confirm_alpha
    (True, 48, 150, 0.05)
    >>> try:
    ...     OptimizerSettings(pipeline="triage", minibatch_size=0)
    ... except ValueError as exc:
    ...     print(exc.errors()[0]["loc"], exc.errors()[0]["msg"])
    ('minibatch_size',) Input should be greater than or equal to 1
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["OptimizerSettings", "StartingArtifact", "CreditHorizon"]


class StartingArtifact(BaseModel):
    """Where the optimizer starts and what it may edit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    editable: list[str] | None = Field(
        default=None,
        description="Tunables fields the optimizer may change (default: every field). The "
        "others are shown as fixed context, never suggested.",
    )
    start_from: Literal["stable", "values"] = Field(
        default="stable",
        description="'stable': improve the param set the pipeline runs on now; 'values': start "
        "from `values` (merged over the stable param set).",
    )
    values: dict[str, Any] | None = Field(
        default=None, description="Starting values when start_from is 'values'."
    )

    @model_validator(mode="after")
    def _values_given(self) -> StartingArtifact:
        if self.start_from == "values" and not self.values:
            raise ValueError("start_from='values' needs `values`")
        return self


class CreditHorizon(BaseModel):
    """How much of each execution enters the prompt (cuts are marked, never silent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(
        default=12,
        ge=1,
        description="Spans (tasks and LLM calls) shown per unit of evidence; the rest are "
        "summarised by a truncation mark.",
    )
    max_value_chars: int = Field(
        default=400,
        ge=20,
        description="Characters of each value (inputs, outputs, messages) shown; longer values "
        "are cut with a mark giving how much was left out.",
    )
    include_llm_messages: bool = Field(
        default=True, description="Show the messages and replies of the LLM calls inside steps."
    )


class OptimizerSettings(BaseModel):
    """One optimizer run's settings (recorded with every proposal it makes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str = Field(description="The pipeline to optimize.")
    kpi: str | None = Field(
        default=None,
        description="The feedback KPI to improve (default: the pipeline's per-item KPI with the "
        "most feedback in the window, else its most frequent KPI).",
    )
    direction: Literal["higher", "lower"] = Field(
        default="higher", description="Whether higher or lower KPI values are better."
    )
    window_days: float = Field(
        default=7.0, gt=0, description="Evidence comes from runs with feedback this recent."
    )
    starting_artifact: StartingArtifact = Field(default_factory=StartingArtifact)
    credit_horizon: CreditHorizon = Field(default_factory=CreditHorizon)
    minibatch_size: int = Field(
        default=4, ge=1, le=64, description="Units of evidence (items or runs) per update."
    )
    focus: Literal["failures", "random"] = Field(
        default="failures",
        description="'failures': each minibatch holds the worst-scored units first, plus one "
        "that went well for contrast; 'random': a seeded random sample.",
    )
    step_credit: bool = Field(
        default=False,
        description="Step-level credit (STeCa): find the first step that went wrong in each "
        "failed unit and give the LLM a problem focused on the most blamed step and the "
        "params it reads (recorded in step_credit). Off: the whole trace, every param.",
    )
    tune_instruction_every: int = Field(
        default=0,
        ge=0,
        description="Before the run, rewrite the optimizer's own instruction for the pipeline "
        "once this many new rated proposals arrived since the last rewrite (Retroformer; "
        "optimizer_instructions). 0: never (the latest tuned instruction is still used).",
    )
    memory_size: int = Field(
        default=3,
        ge=0,
        description="Past proposals for the pipeline (with their outcomes) shown to the LLM.",
    )
    max_updates: int = Field(
        default=3,
        ge=1,
        description="Most LLM updates (each a fresh minibatch) in one optimizer run.",
    )
    proposals_per_run: int = Field(
        default=1,
        ge=1,
        description="Stop once this many valid proposals were made (each update starts from "
        "the same parent: its evidence was produced with the parent's values).",
    )
    budget_tokens: int | None = Field(
        default=200_000,
        ge=1,
        description="Most LLM tokens (prompt + completion) one optimizer run may use; a call "
        "that would overrun it is not made.",
    )
    budget_usd: float | None = Field(
        default=1.0,
        gt=0,
        description="Most USD one optimizer run may spend, where litellm knows the model's "
        "price: the optimizer's calls, and with the search the task model's calls of the "
        "replays too (a paid task model).",
    )
    model: str | None = Field(
        default=None,
        description="litellm model string (default: GENOPT_MODEL, else the embedded model).",
    )
    response_format: Literal["auto", "json_schema", "json_object", "none"] | None = Field(
        default=None, description="Default: GENOPT_RESPONSE_FORMAT ('auto')."
    )
    temperature: float = Field(default=0.0, ge=0, le=2, description="Optimizer LLM temperature.")
    retry_temperature: float = Field(
        default=0.7,
        ge=0,
        le=2,
        description="Temperature of the one retry after an unusable answer (at least "
        "`temperature`): the same context at temperature 0 tends to give the same answer again.",
    )
    max_output_tokens: int = Field(
        default=1024, ge=64, description="Most tokens of one optimizer answer."
    )
    timeout_s: float | None = Field(
        default=None, gt=0, description="Seconds per LLM call (default: GENOPT_LLM_TIMEOUT)."
    )
    seed: int = Field(default=0, description="Seed of the minibatch sampling.")
    evidence_run_ids: list[str] | None = Field(
        default=None,
        description="Use only these runs as evidence (experiments, backtests); default: every "
        "run of the parent param set in the window.",
    )

    # -- the nightly search (issue 14) ------------------------------------------------------
    search: bool = Field(
        default=True,
        description="Run the search: draft many candidates (instruction drafts, demo sets, "
        "their combination, an OptoPrime update), choose one by successive halving on "
        "replayed items and propose it only when an exact one-sided sign test on the "
        "confirmation items says it beats its parent. False: today's single-shot path (one "
        "LLM update per minibatch, proposed when valid).",
    )
    evidence_items: int = Field(
        default=30,
        ge=1,
        description="Labelled items of the evidence pool: what the optimizer reads and where "
        "demos come from (whole runs, never used for selection or confirmation).",
    )
    selection_items: int = Field(
        default=48,
        ge=2,
        description="Labelled items of the selection pool, where candidates are chosen by "
        "successive halving on replays.",
    )
    confirmation_items: int = Field(
        default=150,
        ge=2,
        description="Labelled items of the confirmation pool, where the winner is tested "
        "against its parent (the paired sign test).",
    )
    pool_runs: int = Field(
        default=50,
        ge=1,
        description="Most recorded runs read to build the pools (newest first).",
    )
    n_drafts: int = Field(
        default=4,
        ge=0,
        description="Instruction drafts asked of the optimizer model per night.",
    )
    draft_temperature: float = Field(
        default=1.0,
        ge=0,
        le=2,
        description="Temperature of the optimizer model's drafts (higher: more diverse).",
    )
    n_demo_sets: int = Field(
        default=6,
        ge=0,
        description="Balanced demo sets (2-4 verified experiences each) drawn per `demos` param.",
    )
    confirm_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="A candidate is proposed only when the one-sided exact sign test on the "
        "confirmation items where it and its parent disagree gives p below this.",
    )
    task_call_budget: int | None = Field(
        default=2000,
        ge=1,
        description="Most task-model calls the replays of one night may make (cached scores "
        "count their calls); the night stops cleanly when it is spent. None: unlimited.",
    )
    optimizer_call_budget: int | None = Field(
        default=12,
        ge=1,
        description="Most optimizer-model calls one night may make (drafts, the OptoPrime "
        "update); None: unlimited.",
    )
    reuse_recorded_steps: bool = Field(
        default=True,
        description="On the search's replays, a recording step whose inputs, version, params "
        "read and model are unchanged (a step upstream of the one tuned tonight) returns its "
        "recorded output instead of running (prefect_genopt.replay.steps).",
    )

    rollout: Literal["manual", "auto"] = Field(
        default="manual",
        description="'manual': proposals wait for `genopt rollout start`; 'auto': the optimizer "
        "flow starts a canary of its latest proposal at once (when no rollout is active).",
    )
    rollout_plan: dict[str, Any] | None = Field(
        default=None,
        description="Rollout plan fields for 'auto' (see prefect_genopt.rollout.RolloutPlan; the "
        "KPI defaults to the optimizer's).",
    )

    def recorded(self) -> dict[str, Any]:
        """The settings as stored with a proposal (JSON-compatible)."""
        return self.model_dump(mode="json")
