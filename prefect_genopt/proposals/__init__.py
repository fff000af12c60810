"""Proposals and their ratings: what the optimizer suggested, and how each one fared.

A layer of their own, above the warehouse and below the parts that use them: the
optimizer records proposals and reads past ratings as memory, the replay gate rates
and rejects a candidate, the rollout controller moves a proposal's status and rates it
by its canary, and the CLI lists them. None of those imports another for this.

Example:
    >>> from prefect_genopt.proposals import FINAL_STATUSES
    >>> sorted(FINAL_STATUSES)
    ['no_change', 'not_better', 'promoted', 'rejected', 'rolled_back']
"""

from prefect_genopt.proposals.proposals import (
    FINAL_STATUSES,
    STATUSES,
    ProposalError,
    get_proposal,
    list_proposals,
    markdown,
    new_proposal_id,
    record_proposal,
    reject_proposal,
    set_status,
)
from prefect_genopt.proposals.ratings import best_and_worst, rate, rating_row, reflections

__all__ = [
    "STATUSES",
    "FINAL_STATUSES",
    "ProposalError",
    "new_proposal_id",
    "record_proposal",
    "set_status",
    "reject_proposal",
    "list_proposals",
    "get_proposal",
    "markdown",
    "rating_row",
    "rate",
    "reflections",
    "best_and_worst",
]
