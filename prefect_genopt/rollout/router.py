"""Which param set an item (or a run) uses: a stable hash of (rollout id, item key).

A pipeline run reads its pipeline's routing state once (cached for
``GENOPT_ROUTING_TTL`` seconds per process) and routes every item from that
snapshot, so routing an item costs one hash. An item goes to the canary when
``bucket(rollout_id, item_key) < weight``: the same item stays on the same arm for
the whole rollout, and raising the weight only moves stable items to the canary.

The whole read (the pointer and any param set not cached yet) ends within
``GENOPT_ROUTING_TIMEOUT`` seconds, whatever Prefect's client retries would do
(docs/architecture.md, decision 16).

Failing safe: when the state cannot be read (API unreachable or too slow, a
malformed pointer, a param set that cannot be loaded or no longer fits the
Tunables), the run never goes to the canary; it uses, in this order, the last
state this process read (``process``), the state file any process on this machine
kept (``state-file``, :func:`prefect_genopt.rollout.store.load_last_known`: the
promoted stable and a pin survive an outage in a fresh process), else the code
defaults (``defaults``). A pin is honoured from either. It logs a warning and
records ``genopt.routing_error`` and ``genopt.routing_source`` on its spans
(``runs.routing_error``, ``runs.routing_source``). A read that worked has source
``api`` (or ``cache`` within ``GENOPT_ROUTING_TTL``).

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
from typing import Any

from prefect_genopt.rollout import store
from prefect_genopt.rollout.state import RoutingState
from prefect_genopt.settings import get_settings
from prefect_genopt.tunables import Tunables

__all__ = ["bucket", "Route", "resolve_route", "ARMS", "SOURCES"]

logger = logging.getLogger("prefect_genopt.rollout")
#: arms a run or item can be on
ARMS = ("stable", "canary", "pinned")
#: where a run's route came from (``runs.routing_source``)
SOURCES = ("api", "cache", "process", "state-file", "defaults")
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
    #: where the route came from: one of :data:`SOURCES`
    source: str = "api"
    split_items: bool = field(default=False, compare=False)
    #: the arms this run's items went to so far (see :meth:`item_arm`)
    item_arms: set[str] = field(default_factory=set, compare=False)

    def arm_for(self, key: str) -> str:
        """The arm of one item (or of a run, keyed by its run id)."""
        if self.pinned is not None:
            return "pinned"
        if self.canary is None or self.rollout_id is None or self.weight <= 0:
            return "stable"
        return "canary" if bucket(self.rollout_id, key) < self.weight else "stable"

    def item_arm(self, key: str) -> str:
        """:meth:`arm_for` of one item of this run, remembered for :meth:`run_level`."""
        arm = self.arm_for(key)
        self.split_items = True
        self.item_arms.add(arm)
        return arm

    def run_level(self) -> tuple[str | None, str]:
        """``(param set id, arm)`` of a run-level value of a run whose items were routed:
        the one arm all its items went to, else ``(None, "mixed")`` (a truly split run).

        Example:
            >>> from prefect_genopt.tunables import Tunables
            >>> class P(Tunables):
            ...     x: int = 1
            >>> r = Route(pipeline="p", stable=P(), canary=P(x=2), rollout_id="ro", weight=0.5)
            >>> keys = [f"k{i}" for i in range(40)]
            >>> one = [k for k in keys if r.arm_for(k) == "stable"][:3]
            >>> _ = [r.item_arm(k) for k in one]
            >>> r.run_level() == (P().param_set_id, "stable")
            True
            >>> _ = [r.item_arm(k) for k in keys]
            >>> r.run_level()
            (None, 'mixed')
        """
        arms = set(self.item_arms)
        if len(arms) == 1:
            (arm,) = arms
            return self.params_for(arm).param_set_id, arm
        return None, "mixed"

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


def _load(
    pipeline: str, params_cls: type[Tunables], ps_id: str, timeout: float, deadline: float
) -> Tunables:
    defaults = params_cls()
    if ps_id == defaults.param_set_id:
        return defaults
    values = store.load_param_set(pipeline, ps_id, timeout, deadline=deadline)
    return _fit(params_cls, ps_id, values)


def _fit(params_cls: type[Tunables], ps_id: str, values: dict[str, Any]) -> Tunables:
    try:
        return params_cls(**values)
    except Exception as exc:  # noqa: BLE001
        raise store.RoutingUnavailable(
            f"param set {ps_id} does not fit {params_cls.__name__}: {exc}"
        ) from exc


def _known_values(params_cls: type[Tunables], ps_id: str | None) -> Tunables | None:
    """A param set this process has the values of (never asks the API)."""
    if not ps_id:
        return None
    defaults = params_cls()
    if ps_id == defaults.param_set_id:
        return defaults
    values = store.cached_values(ps_id)
    return _fit(params_cls, ps_id, values) if values is not None else None


def _from_process(pipeline: str, params_cls: type[Tunables]) -> Route | None:
    """The route from the last state this process read, if it has the values it needs."""
    known = store.last_known_state(pipeline)
    if known is None:
        return None
    try:
        stable = _known_values(params_cls, known.stable) if known.stable else params_cls()
        pinned = _known_values(params_cls, known.pinned)
    except store.RoutingUnavailable:
        return None
    if stable is None or (known.pinned and pinned is None):
        return None
    return Route(pipeline=pipeline, stable=stable, pinned=pinned, source="process")


def _from_file(pipeline: str, params_cls: type[Tunables]) -> tuple[Route | None, str]:
    """The route from the state file, and why not when there is none to use."""
    kept = store.load_last_known(pipeline)
    if kept is None:
        return None, "no state file"
    state = kept.state
    try:
        stable: Tunables = params_cls()
        if state.stable and state.stable != stable.param_set_id:
            if kept.stable_values is None:
                return None, f"the state file has no values for the stable {state.stable}"
            stable = _fit(params_cls, state.stable, kept.stable_values)
        pinned = None
        if state.pinned:
            if state.pinned == params_cls().param_set_id:
                pinned = params_cls()
            elif kept.pinned_values is None:
                return None, f"the state file has no values for the pin {state.pinned}"
            else:
                pinned = _fit(params_cls, state.pinned, kept.pinned_values)
    except store.RoutingUnavailable as exc:
        return None, f"the state file's param set does not fit: {exc}"
    return Route(pipeline=pipeline, stable=stable, pinned=pinned, source="state-file"), ""


def _fallback(pipeline: str, params_cls: type[Tunables], why: str) -> Route:
    """Never the canary: the last state this process read, the state file, the defaults."""
    route = _from_process(pipeline, params_cls)
    note = ""
    if route is None:
        route, note = _from_file(pipeline, params_cls)
    if route is None:
        route = Route(pipeline=pipeline, stable=params_cls(), source="defaults")
    used = route.pinned if route.pinned is not None else route.stable
    what = "the pinned" if route.pinned is not None else "the stable"
    detail = f"; {note}" if note and route.source == "defaults" else ""
    route.error = (
        f"{why} [routing from {route.source}: {what} param set {used.param_set_id}{detail}]"[:1000]
    )
    logger.warning(
        "genopt routing for %r fell back to %s param set %s (from %s): %s",
        pipeline,
        what,
        used.param_set_id,
        route.source,
        why,
    )
    return route


def resolve_route(pipeline: str, params_cls: type[Tunables]) -> Route:
    """The routing snapshot for one run of ``pipeline`` (never raises).

    Reads the pointer (and the param sets it names that this process has not loaded)
    within ``GENOPT_ROUTING_TIMEOUT`` seconds in all, keeps what it read in the state
    file, and falls back as the module says when it cannot.
    """
    settings = get_settings()
    now = time.monotonic()
    timeout = settings.routing_timeout
    deadline = now + timeout
    try:
        state: RoutingState | None = store.cached_state(pipeline, settings.routing_ttl, now)
        fresh = state is None
        if state is None:
            state = store.read_state(pipeline, timeout, deadline=deadline)
        stable = (
            _load(pipeline, params_cls, state.stable, timeout, deadline) if state.stable else None
        )
        route = Route(
            pipeline=pipeline, stable=stable or params_cls(), source="api" if fresh else "cache"
        )
        if state.pinned:
            route.pinned = _load(pipeline, params_cls, state.pinned, timeout, deadline)
        elif state.status in ("running", "paused") and state.canary and state.weight > 0:
            route.canary = _load(pipeline, params_cls, state.canary, timeout, deadline)
            route.rollout_id = state.rollout_id
            route.weight = state.weight
    except store.RoutingUnavailable as exc:
        return _fallback(pipeline, params_cls, str(exc))
    except Exception as exc:  # noqa: BLE001 - routing must never fail a run
        return _fallback(pipeline, params_cls, f"{type(exc).__name__}: {exc}")
    if fresh:
        store.remember_state(state, now)
        store.save_last_known(
            state,
            route.stable.values() if state.stable else None,
            route.pinned.values() if route.pinned is not None else None,
        )
    return route
