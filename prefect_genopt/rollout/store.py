"""Where workers read the routing state: the Prefect API.

* The pointer (a :class:`~prefect_genopt.rollout.state.RoutingState`, well under
  Prefect's 5000-character limit) is the Variable ``genopt-route-<pipeline>``.
* Param-set content lives in blocks of the small custom type
  :class:`ParamSetBlock` (``genopt-param-set``), one per param set, named
  ``<pipeline>-<param set id>``. Param sets are content-addressed and never edited,
  so a worker caches one forever once loaded.

Variables have no compare-and-set: only the rollout controller writes the pointer,
under the pipeline's ``genopt-rollout-<pipeline>`` lock, and :func:`write_state`
re-reads the revision before writing, so a stale writer fails instead of
overwriting (``StaleStateError``). History goes to the warehouse through the
spool, like every other write.

Reads (the pointer, once per pipeline run; a param set, once per process) go
through one started client per process and API address, so a run pays for the
request (~3 ms on a local API) and not for building a client (~23 ms).

Example:
    >>> variable_name("Ticket Triage")
    'genopt-route-ticket-triage-408eb2'
    >>> variable_name("triage")
    'genopt-route-triage'
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from prefect_genopt.errors import ConflictError, UnavailableError
from prefect_genopt.locks import slug
from prefect_genopt.rollout.state import RoutingState

__all__ = [
    "ParamSetBlock",
    "StaleStateError",
    "RoutingUnavailable",
    "variable_name",
    "block_name",
    "read_state",
    "write_state",
    "save_param_set",
    "load_param_set",
]


class StaleStateError(ConflictError, RuntimeError):
    """The pointer changed since it was read: the decision is dropped, not applied."""


class RoutingUnavailable(UnavailableError, RuntimeError):
    """The routing state could not be read (API down, bad value, missing param set)."""


class ParamSetBlock(Block):
    """One param set of a genopt pipeline, as workers load it (never edited)."""

    _block_type_name: ClassVar[str] = "genopt param set"
    _block_type_slug: ClassVar[str] = "genopt-param-set"
    _description: ClassVar[str] = (
        "A param set of a prefect-genopt pipeline (content-addressed; written by "
        "`genopt rollout`, read by every pipeline run that routes to it)."
    )

    pipeline: str = Field(description="The pipeline the param set belongs to.")
    param_set_id: str = Field(description="Its content hash (ps_...).")
    values: dict[str, Any] = Field(description="The Tunables values.")


def _named(prefix: str, pipeline: str) -> str:
    s = slug(pipeline)
    if s != pipeline:  # different names can share a slug: keep them apart
        s += "-" + hashlib.sha256(pipeline.encode()).hexdigest()[:6]
    return f"{prefix}{s}"


def variable_name(pipeline: str) -> str:
    """The Prefect Variable holding ``pipeline``'s routing pointer."""
    return _named("genopt-route-", pipeline)


def block_name(pipeline: str, param_set_id: str) -> str:
    """The block document holding one param set."""
    return _named("", pipeline) + "-" + slug(param_set_id)


def _client(timeout: float | None = None) -> Any:
    from prefect.client.orchestration import get_client

    settings = {"timeout": timeout} if timeout else None
    return get_client(httpx_settings=settings, sync_client=True)


# -- the read client every pipeline run shares ---------------------------------------------
# Building a Prefect client costs ~23 ms (httpx loads the TLS trust store), ten times the
# read itself (~3 ms on a local API), and every pipeline run reads the pointer once. So
# reads go through one started client per process and API address, kept until the process
# exits or a read through it fails (a new one is built on the next read).

_reader: tuple[tuple[Any, ...], Any] | None = None
_reader_lock = threading.Lock()


def _reader_key(timeout: float | None) -> tuple[Any, ...]:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    auth = PREFECT_API_AUTH_STRING.value()
    key = PREFECT_API_KEY.value()
    return (
        os.getpid(),
        PREFECT_API_URL.value(),
        hashlib.sha256(f"{key}\0{auth}".encode()).hexdigest(),
        timeout,
    )


def _shared_reader(timeout: float | None) -> Any:
    """The started read client for the current API settings (built on first use)."""
    global _reader
    key = _reader_key(timeout)
    with _reader_lock:
        if _reader is not None and _reader[0] == key:
            return _reader[1]
        stale, _reader = _reader, None
    if stale is not None and stale[0][0] == os.getpid():
        _close(stale[1])
    client = _client(timeout)
    client.__enter__()
    with _reader_lock:
        if _reader is None:
            _reader = (key, client)
            return client
        winner = _reader[1] if _reader[0] == key else None
    if winner is None:  # the settings changed again meanwhile: use ours once
        return client
    _close(client)
    return winner


def _drop_reader(client: Any) -> None:
    """Forget a client a read failed through (the next read builds a new one)."""
    global _reader
    with _reader_lock:
        if _reader is None or _reader[1] is not client:
            return
        _reader = None
    _close(client)


def _close(client: Any) -> None:
    try:
        client.__exit__(None, None, None)
    except Exception:  # noqa: BLE001 - closing a broken client must not fail a run
        pass


@atexit.register
def _close_reader() -> None:
    global _reader
    held, _reader = _reader, None
    if held is not None and held[0][0] == os.getpid():
        _close(held[1])


def read_state(pipeline: str, timeout: float | None = None) -> RoutingState:
    """The pipeline's pointer (an idle state at revision 0 when none was written).

    Reads through the client the process shares for routing reads.

    Raises:
        RoutingUnavailable: The API cannot be reached or holds a malformed pointer.
    """
    client = None
    try:
        client = _shared_reader(timeout)
        var = client.read_variable_by_name(variable_name(pipeline))
    except Exception as exc:  # noqa: BLE001 - every failure means "cannot route"
        if client is not None:
            _drop_reader(client)
        raise RoutingUnavailable(f"cannot read {variable_name(pipeline)}: {exc}") from exc
    if var is None:
        return RoutingState(pipeline=pipeline)
    try:
        state = RoutingState.model_validate(var.value)
    except Exception as exc:  # noqa: BLE001
        raise RoutingUnavailable(
            f"Variable {variable_name(pipeline)} does not hold a routing state: {exc}"
        ) from exc
    if state.pipeline != pipeline:
        raise RoutingUnavailable(
            f"Variable {variable_name(pipeline)} holds the state of {state.pipeline!r}"
        )
    return state


def write_state(state: RoutingState, expected_revision: int) -> None:
    """Write the pointer if it is still at ``expected_revision``.

    Raises:
        StaleStateError: Someone else changed it since it was read.
    """
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    name = variable_name(state.pipeline)
    value = state.model_dump(mode="json")
    with _client() as client:
        current = client.read_variable_by_name(name)
        revision = 0
        if current is not None:
            try:
                revision = int(current.value.get("revision", 0))  # type: ignore[union-attr]
            except (AttributeError, TypeError, ValueError):
                revision = -1
        if revision != expected_revision:
            raise StaleStateError(
                f"{name} is at revision {revision}, expected {expected_revision}: "
                "another controller acted first; this decision was not applied"
            )
        if current is None:
            client.create_variable(VariableCreate(name=name, value=value, tags=["genopt"]))
        else:
            client.update_variable(VariableUpdate(name=name, value=value))
    _forget(state.pipeline)


_values_cache: dict[str, dict[str, Any]] = {}
_cache_lock = threading.Lock()


def save_param_set(pipeline: str, param_set_id: str, values: dict[str, Any]) -> str:
    """Store a param set where every worker can load it; returns the block's name."""
    name = block_name(pipeline, param_set_id)
    ParamSetBlock(pipeline=pipeline, param_set_id=param_set_id, values=values).save(
        name, overwrite=True
    )
    with _cache_lock:
        _values_cache[param_set_id] = dict(values)
    return name


def load_param_set(
    pipeline: str, param_set_id: str, timeout: float | None = None
) -> dict[str, Any]:
    """A param set's values (cached for the life of the process).

    Raises:
        RoutingUnavailable: Not stored, or the API cannot be reached.
    """
    with _cache_lock:
        hit = _values_cache.get(param_set_id)
    if hit is not None:
        return dict(hit)
    name = block_name(pipeline, param_set_id)
    client = None
    try:
        client = _shared_reader(timeout)
        doc = client.read_block_document_by_name(
            name, block_type_slug=ParamSetBlock.get_block_type_slug()
        )
        values = dict(doc.data["values"])
    except Exception as exc:  # noqa: BLE001
        if client is not None:
            _drop_reader(client)
        raise RoutingUnavailable(f"cannot load param set {param_set_id} ({name}): {exc}") from exc
    with _cache_lock:
        _values_cache[param_set_id] = values
    return dict(values)


# -- the pointer cache used by the router ------------------------------------------------

_state_cache: dict[str, tuple[float, RoutingState]] = {}


def cached_state(pipeline: str, ttl: float, now: float) -> RoutingState | None:
    """The pointer read less than ``ttl`` seconds ago, if any."""
    with _cache_lock:
        hit = _state_cache.get(pipeline)
    if hit is not None and now - hit[0] < ttl:
        return hit[1]
    return None


def remember_state(state: RoutingState, now: float) -> None:
    """Keep a pointer that was read (also the fallback when the API fails later)."""
    with _cache_lock:
        _state_cache[state.pipeline] = (now, state)


def last_known_state(pipeline: str) -> RoutingState | None:
    """The last pointer this process read, however old."""
    with _cache_lock:
        hit = _state_cache.get(pipeline)
    return hit[1] if hit else None


def _forget(pipeline: str) -> None:
    with _cache_lock:
        _state_cache.pop(pipeline, None)
