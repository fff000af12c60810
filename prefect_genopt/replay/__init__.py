"""Record & replay (AgentRR): the replay gate a candidate passes before its canary."""

from prefect_genopt.replay.gate import GateResult, replay_gate

__all__ = ["GateResult", "replay_gate"]
