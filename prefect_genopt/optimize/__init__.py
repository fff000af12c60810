"""The optimizer: warehouse evidence -> OptoPrime problem -> litellm -> validated proposals.

Example:
    >>> from prefect_genopt.optimize import OptimizerSettings
    >>> OptimizerSettings(pipeline="triage").minibatch_size
    4
"""

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
from prefect_genopt.optimize.proposals import (
    ProposalError,
    get_proposal,
    list_proposals,
    markdown,
    reject_proposal,
    set_status,
)
from prefect_genopt.optimize.runner import OptimizeResult, UpdateOutcome, optimize
from prefect_genopt.optimize.validate import SuggestionError, check_suggestion

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
