"""Moved to :mod:`prefect_genopt.proposals.proposals`: proposals are a layer of their own,
used by the optimizer, the replay gate and the rollout controller alike. This old path
re-exports its public names (see docs/architecture.md)."""

from prefect_genopt.proposals.proposals import *  # noqa: F403
from prefect_genopt.proposals.proposals import __all__  # noqa: F401
