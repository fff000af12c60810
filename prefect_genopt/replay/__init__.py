"""Record & replay (AgentRR): experiences with check functions, verified replay of
recorded steps, and the replay gate a candidate passes before its canary.

Two layers live here: :mod:`~prefect_genopt.replay.steps` and
:mod:`~prefect_genopt.replay.checks` run inside a pipeline run (``@genopt.task`` records
and replays steps through them), while :mod:`~prefect_genopt.replay.experiences` and
:mod:`~prefect_genopt.replay.gate` work on the warehouse afterwards. The names below are
imported on first use (PEP 562), so a pipeline run loads only the first two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_genopt._lazy import attach

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports these
    from prefect_genopt.replay.checks import check
    from prefect_genopt.replay.experiences import HarvestResult, harvest, verified_demos
    from prefect_genopt.replay.gate import GateResult, replay_gate

__all__ = ["GateResult", "HarvestResult", "check", "harvest", "replay_gate", "verified_demos"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "check": "checks",
        **dict.fromkeys(("HarvestResult", "harvest", "verified_demos"), "experiences"),
        **dict.fromkeys(("GateResult", "replay_gate"), "gate"),
    },
)
