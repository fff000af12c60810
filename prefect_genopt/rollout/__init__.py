"""Canary rollouts: routing state, item hash, analysis and the controller.

Imports here stay light (the router is imported by every pipeline run); the
controller, which needs the warehouse, is imported where it is used.
"""

from prefect_genopt.rollout.plan import FAST_PLAN, RolloutPlan

__all__ = ["RolloutPlan", "FAST_PLAN"]
