"""The optimizer: warehouse evidence -> OptoPrime problem -> litellm -> validated proposals.

Its names are imported from their modules on first use (PEP 562), so importing one
module of the package (``optimize.config`` for :class:`OptimizerSettings`) does not
load the rest (litellm, tracing). Proposals live in :mod:`prefect_genopt.proposals`;
their names are kept here.

Example:
    >>> from prefect_genopt.optimize import OptimizerSettings
    >>> OptimizerSettings(pipeline="triage").minibatch_size
    4
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_genopt._lazy import attach

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports these
    from prefect_genopt.optimize.config import CreditHorizon, OptimizerSettings, StartingArtifact
    from prefect_genopt.optimize.evidence import Evidence, EvidenceError, collect
    from prefect_genopt.optimize.llm import (
        BudgetExhausted,
        LLMCallError,
        LLMTimeout,
        parse_reply,
        resolve_model,
        resolve_response_format,
    )
    from prefect_genopt.optimize.optoprime import Optimizer, OptoPrime, Problem
    from prefect_genopt.optimize.runner import OptimizeResult, UpdateOutcome, optimize
    from prefect_genopt.optimize.validate import SuggestionError, check_suggestion
    from prefect_genopt.proposals.proposals import (
        ProposalError,
        get_proposal,
        list_proposals,
        markdown,
        reject_proposal,
        set_status,
    )

__all__ = [
    "OptimizerSettings",
    "StartingArtifact",
    "CreditHorizon",
    "Evidence",
    "EvidenceError",
    "collect",
    "Optimizer",
    "OptoPrime",
    "Problem",
    "optimize",
    "OptimizeResult",
    "UpdateOutcome",
    "check_suggestion",
    "SuggestionError",
    "parse_reply",
    "resolve_model",
    "resolve_response_format",
    "BudgetExhausted",
    "LLMCallError",
    "LLMTimeout",
    "ProposalError",
    "list_proposals",
    "get_proposal",
    "reject_proposal",
    "set_status",
    "markdown",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        **dict.fromkeys(("OptimizerSettings", "StartingArtifact", "CreditHorizon"), "config"),
        **dict.fromkeys(("Evidence", "EvidenceError", "collect"), "evidence"),
        **dict.fromkeys(
            (
                "BudgetExhausted",
                "LLMCallError",
                "LLMTimeout",
                "parse_reply",
                "resolve_model",
                "resolve_response_format",
            ),
            "llm",
        ),
        **dict.fromkeys(("Optimizer", "OptoPrime", "Problem"), "optoprime"),
        **dict.fromkeys(("optimize", "OptimizeResult", "UpdateOutcome"), "runner"),
        **dict.fromkeys(("check_suggestion", "SuggestionError"), "validate"),
        # proposals are a layer below the optimizer: imported from their own package
        **dict.fromkeys(
            (
                "ProposalError",
                "list_proposals",
                "get_proposal",
                "reject_proposal",
                "set_status",
                "markdown",
            ),
            "..proposals.proposals",
        ),
    },
)
