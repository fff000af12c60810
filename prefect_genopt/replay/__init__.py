"""Record & replay (AgentRR): experiences with check functions, verified replay of
recorded steps, and the replay gate a candidate passes before its canary."""

from prefect_genopt.replay.checks import check
from prefect_genopt.replay.experiences import HarvestResult, harvest, verified_demos
from prefect_genopt.replay.gate import GateResult, replay_gate

__all__ = ["GateResult", "HarvestResult", "check", "harvest", "replay_gate", "verified_demos"]
