"""Which param set an item (or a run) uses: a stable hash of (rollout id, item key).

A pipeline run reads its pipeline's routing state once (cached for
``GENOPT_ROUTING_TTL`` seconds per process) and routes every item from that
snapshot, so routing an item costs one hash. An item goes to the canary when
``bucket(rollout_id, item_key) < weight``: the same item stays on the same arm for
the whole rollout, and raising the weight only moves stable items to the canary.

Failing safe: when the state cannot be read (API unreachable, a malformed
pointer, a param set that cannot be loaded or no longer fits the Tunables), the
run uses the stable param set (the last one this process saw, else the code
defaults), logs a warning and records ``genopt.routing_error`` on its spans.

Example:
    >>> b = bucket("ro_1", "ticket-7")
    >>> 0 <= b < 1, b == bucket("ro_1", "ticket-7"), b == bucket("ro_2", "ticket-7")
    (True, True, False)
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from prefect_genopt.rollout import store
from prefect_genopt.rollout.state import RoutingState
from prefect_genopt.settings import get_settings
from prefect_genopt.tunables import Tunables

__all__ = ["bucket", "Route", "resolve_route", "ARMS"]

logger = logging.getLogger("prefect_genopt.rollout")
#: arms a run or item can be on
ARMS = ("stable", "canary", "pinned")
_SCALE = float(1 << 64)


def bucket(rollout_id: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (rollout id, key)."""
    digest = hashlib.blake2b(f"{rollout_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass
class Route:
    """A run's routing snapshot: the param set of each arm and the weight."""

    pipeline: str
    stable: Tunables
    canary: Tunables | None = None
    pinned: Tunables | None = None
    rollout_id: str | None = None
    weight: float = 0.0
    error: str | None = None
    split_items: bool = field(default=False, compare=False)

    def arm_for(self, key: str) -> str:
        """The arm of one item (or of a run, keyed by its run id)."""
        if self.pinned is not None:
            return "pinned"
        if self.canary is None or self.rollout_id is None or self.weight <= 0:
            return "stable"
        return "canary" if bucket(self.rollout_id, key) < self.weight else "stable"

    def params_for(self, arm: str) -> Tunables:
        """The param set of an arm."""
        if arm == "pinned" and self.pinned is not None:
            return self.pinned
        if arm == "canary" and self.canary is not None:
            return self.canary
        return self.stable

    @property
    def splitting(self) -> bool:
        """Items may land on different arms."""
        return self.pinned is None and self.canary is not None and self.weight > 0


def _load(pipeline: str, params_cls: type[Tunables], ps_id: str, timeout: float) -> Tunables:
    defaults = params_cls()
    if ps_id == defaults.param_set_id:
        return defaults
    values = store.load_param_set(pipeline, ps_id, timeout)
    try:
        params = params_cls(**values)
    except Exception as exc:  # noqa: BLE001
        raise store.RoutingUnavailable(
            f"param set {ps_id} does not fit {params_cls.__name__}: {exc}"
        ) from exc
    return params


def _fallback(pipeline: str, params_cls: type[Tunables], why: str, timeout: float) -> Route:
    stable: Tunables = params_cls()
    known = store.last_known_state(pipeline)
    if known is not None and known.stable and known.pinned is None:
        try:  # the stable param set this process used last, if it is still cached
            stable = _load(pipeline, params_cls, known.stable, timeout)
        except store.RoutingUnavailable:
            pass
    logger.warning(
        "genopt routing for %r fell back to the stable param set %s: %s",
        pipeline,
        stable.param_set_id,
        why,
    )
    return Route(pipeline=pipeline, stable=stable, error=why[:500])


def resolve_route(pipeline: str, params_cls: type[Tunables]) -> Route:
    """The routing snapshot for one run of ``pipeline`` (never raises)."""
    settings = get_settings()
    now = time.monotonic()
    try:
        state: RoutingState | None = store.cached_state(pipeline, settings.routing_ttl, now)
        fresh = state is None
        if state is None:
            state = store.read_state(pipeline, settings.routing_timeout)
        timeout = settings.routing_timeout
        stable = _load(pipeline, params_cls, state.stable, timeout) if state.stable else None
        route = Route(pipeline=pipeline, stable=stable or params_cls())
        if state.pinned:
            route.pinned = _load(pipeline, params_cls, state.pinned, timeout)
        elif state.status in ("running", "paused") and state.canary and state.weight > 0:
            route.canary = _load(pipeline, params_cls, state.canary, timeout)
            route.rollout_id = state.rollout_id
            route.weight = state.weight
    except store.RoutingUnavailable as exc:
        return _fallback(pipeline, params_cls, str(exc), settings.routing_timeout)
    except Exception as exc:  # noqa: BLE001 - routing must never fail a run
        return _fallback(
            pipeline, params_cls, f"{type(exc).__name__}: {exc}", settings.routing_timeout
        )
    if fresh:
        store.remember_state(state, now)
    return route
