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

A read given a ``timeout`` has a hard deadline, whatever Prefect's client retries do
(they wait 2, 4, 8... s on a 503 or a dropped connection): it runs in a worker thread,
and a read still going at the deadline is abandoned, its client dropped (closed when
the abandoned call returns), so the next read builds a fresh one
(docs/architecture.md, decision 16).

Every process keeps the last routing state it read in a small file under
``GENOPT_STATE_DIR`` (default ``$PREFECT_HOME/genopt/state``), with the values of the
stable and pinned param sets, written with an atomic replace; a fresh process that
cannot read the API routes by it (:func:`save_last_known`, :func:`load_last_known`).

Example:
    >>> variable_name("Ticket Triage")
    'genopt-route-ticket-triage-408eb2'
    >>> variable_name("triage")
    'genopt-route-triage'
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import orjson
from prefect.blocks.core import Block
from pydantic import Field

from prefect_genopt.errors import ConflictError, GenoptError, UnavailableError
from prefect_genopt.locks import slug
from prefect_genopt.records import HOST
from prefect_genopt.rollout.state import RoutingState

__all__ = [
    "ParamSetBlock",
    "StaleStateError",
    "RoutingUnavailable",
    "PrefectUnavailable",
    "api_url",
    "is_unreachable",
    "reaching_api",
    "LastKnown",
    "state_dir",
    "state_file",
    "save_last_known",
    "load_last_known",
    "cached_values",
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


class PrefectUnavailable(RoutingUnavailable):
    """The Prefect API could not be reached: refused, down, answering 5xx, or too slow.

    Its message starts with "Prefect API unreachable at <URL>"; ``genopt`` exits 2 on it.
    """


logger = logging.getLogger("prefect_genopt.rollout")
T = TypeVar("T")


def api_url() -> str:
    """The Prefect API address this process talks to (for messages)."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value() or "(no PREFECT_API_URL: Prefect's ephemeral API)")


#: HTTP statuses that mean the API is down or overloaded, not that the request is wrong
_DOWN_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) says the API is down rather than the request
    wrong: no connection, a timeout, a 5xx answer.

    Example:
        >>> is_unreachable(ConnectionRefusedError(111, "refused")), is_unreachable(KeyError("x"))
        (True, False)
    """
    import httpx

    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, PrefectUnavailable | ConnectionError | TimeoutError):
            return True
        if isinstance(err, httpx.TransportError):  # no connection, timeouts, broken replies
            return True
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(status, int) and status in _DOWN_STATUSES:
            return True
        err = err.__cause__ or err.__context__
    return False


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def unreachable_error(exc: BaseException, what: str = "") -> PrefectUnavailable:
    """The :class:`PrefectUnavailable` to raise for ``exc`` (doing ``what``)."""
    doing = f" ({what})" if what else ""
    return PrefectUnavailable(f"Prefect API unreachable at {api_url()}{doing}: {_brief(exc)}")


@contextlib.contextmanager
def reaching_api(what: str = "") -> Iterator[None]:
    """Turn "the Prefect API is down" errors raised in the block into
    :class:`PrefectUnavailable` ("Prefect API unreachable at URL"); other errors pass."""
    try:
        yield
    except PrefectUnavailable:
        raise
    except Exception as exc:
        if isinstance(exc, GenoptError) or not is_unreachable(exc):
            raise
        raise unreachable_error(exc, what) from exc


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


def _retire(client: Any) -> None:
    """Forget ``client`` if it is the shared one, and close it (an abandoned read's)."""
    global _reader
    with _reader_lock:
        if _reader is not None and _reader[1] is client:
            _reader = None
    _close(client)


def _detach(client: Any) -> None:
    """Forget ``client`` as the shared one without closing it (a read still uses it)."""
    global _reader
    with _reader_lock:
        if _reader is not None and _reader[1] is client:
            _reader = None


#: reads abandoned at their deadline whose call has not returned yet (each holds a thread)
_abandoned = 0
_abandoned_lock = threading.Lock()
#: past this many abandoned reads still waiting, a read fails at once instead of adding one
MAX_ABANDONED = 4


def _through_reader(
    fn: Callable[[Any], T], what: str, timeout: float | None, deadline: float | None
) -> T:
    """``fn(shared client)``, within ``timeout`` seconds (and before the monotonic
    ``deadline``) however long the client's own retries would take.

    Without either, the call runs in this thread and may take as long as the client
    retries. With one, it runs in a worker thread; at the deadline it is abandoned
    (:class:`PrefectUnavailable`), and its client is dropped so no later read goes
    through a client a hung call still holds: it is closed when that call returns.
    """
    if timeout is None and deadline is None:
        client = None
        try:
            client = _shared_reader(None)
            return fn(client)
        except BaseException:
            if client is not None:
                _drop_reader(client)
            raise
    limits = [x for x in (timeout, None if deadline is None else deadline - time.monotonic())]
    limit = min(x for x in limits if x is not None)
    if limit <= 0:
        raise PrefectUnavailable(
            f"Prefect API unreachable at {api_url()} ({what}): no time left within "
            "GENOPT_ROUTING_TIMEOUT"
        )
    global _abandoned
    with _abandoned_lock:
        if _abandoned >= MAX_ABANDONED:
            raise PrefectUnavailable(
                f"Prefect API unreachable at {api_url()} ({what}): {_abandoned} earlier "
                "routing reads are still waiting for an answer"
            )
    box: dict[str, Any] = {}
    guard = threading.Lock()
    done = threading.Event()

    def work() -> None:
        global _abandoned
        client = None
        try:
            client = _shared_reader(timeout)
            with guard:
                box["client"] = client
            box["value"] = fn(client)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            with guard:
                box["done"] = True
                late = box.get("abandoned", False)
            if late:
                if client is not None:
                    _retire(client)
                with _abandoned_lock:
                    _abandoned -= 1
            elif "error" in box and client is not None:
                _drop_reader(client)
            done.set()

    # Prefect's settings (the API URL...) live in context variables: the worker reads
    # with this thread's
    worker = threading.Thread(
        target=contextvars.copy_context().run, args=(work,), name="genopt-routing-read", daemon=True
    )
    worker.start()
    done.wait(limit)
    with guard:
        late = not box.get("done", False)
        if late:
            box["abandoned"] = True
            with _abandoned_lock:
                _abandoned += 1
        hung = box.get("client")
    if late:
        if hung is not None:
            _detach(hung)  # the next read builds a fresh client
        raise PrefectUnavailable(
            f"Prefect API unreachable at {api_url()} ({what}): no answer within "
            f"{limit:.3g}s (GENOPT_ROUTING_TIMEOUT)"
        )
    done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


def read_state(
    pipeline: str, timeout: float | None = None, *, deadline: float | None = None
) -> RoutingState:
    """The pipeline's pointer (an idle state at revision 0 when none was written).

    Reads through the client the process shares for routing reads.

    Args:
        pipeline: The pipeline.
        timeout: Seconds the read may take in all, retries included (a hard deadline;
            also each request's timeout). None: as long as Prefect's client retries.
        deadline: A ``time.monotonic()`` time the read must end by (a hard deadline).

    Raises:
        PrefectUnavailable: The API cannot be reached, or did not answer in time.
        RoutingUnavailable: The API holds a malformed pointer (or another failure).
    """
    name = variable_name(pipeline)
    try:
        var = _through_reader(
            lambda client: client.read_variable_by_name(name), f"reading {name}", timeout, deadline
        )
    except PrefectUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure means "cannot route"
        if is_unreachable(exc):
            raise unreachable_error(exc, f"reading {name}") from exc
        raise RoutingUnavailable(f"cannot read {name}: {exc}") from exc
    if var is None:
        return RoutingState(pipeline=pipeline)
    try:
        state = RoutingState.model_validate(var.value)
    except Exception as exc:  # noqa: BLE001
        raise RoutingUnavailable(f"Variable {name} does not hold a routing state: {exc}") from exc
    if state.pipeline != pipeline:
        raise RoutingUnavailable(f"Variable {name} holds the state of {state.pipeline!r}")
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
    pipeline: str,
    param_set_id: str,
    timeout: float | None = None,
    *,
    deadline: float | None = None,
) -> dict[str, Any]:
    """A param set's values (cached for the life of the process).

    ``timeout`` and ``deadline`` bound the read as in :func:`read_state`.

    Raises:
        PrefectUnavailable: The API cannot be reached, or did not answer in time.
        RoutingUnavailable: Not stored (or another failure).
    """
    hit = cached_values(param_set_id)
    if hit is not None:
        return hit
    name = block_name(pipeline, param_set_id)

    def read(client: Any) -> dict[str, Any]:
        doc = client.read_block_document_by_name(
            name, block_type_slug=ParamSetBlock.get_block_type_slug()
        )
        return dict(doc.data["values"])

    what = f"loading param set {param_set_id} ({name})"
    try:
        values = _through_reader(read, what, timeout, deadline)
    except PrefectUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001
        if is_unreachable(exc):
            raise unreachable_error(exc, what) from exc
        raise RoutingUnavailable(f"cannot load param set {param_set_id} ({name}): {exc}") from exc
    with _cache_lock:
        _values_cache[param_set_id] = values
    return dict(values)


def cached_values(param_set_id: str) -> dict[str, Any] | None:
    """A param set's values if this process has them (never asks the API)."""
    with _cache_lock:
        hit = _values_cache.get(param_set_id)
    return dict(hit) if hit is not None else None


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


# -- the last routing state a process read, kept on disk --------------------------------


@dataclass(frozen=True)
class LastKnown:
    """The routing state a process last read from the API, as kept in its state file.

    ``stable_values`` and ``pinned_values`` are the values of the param sets the pointer
    names (None when it names none): a process that cannot reach the API needs the
    values, not only the ids.
    """

    state: RoutingState
    stable_values: dict[str, Any] | None
    pinned_values: dict[str, Any] | None
    written_at: float
    host: str = ""
    pid: int = 0


def state_dir() -> Path:
    """Where the routing state files live: ``GENOPT_STATE_DIR``, else
    ``$PREFECT_HOME/genopt/state``."""
    from prefect_genopt.settings import default_warehouse_path, get_settings

    configured = get_settings().state_dir
    return (configured or default_warehouse_path().parent / "state").expanduser()


def state_file(pipeline: str) -> Path:
    """The file holding the last routing state of ``pipeline`` any process here read.

    Example:
        >>> state_file("Ticket Triage").name
        'genopt-route-ticket-triage-408eb2.json'
    """
    return state_dir() / f"{variable_name(pipeline)}.json"


#: what this process last wrote per state file (so an unchanged state is not rewritten)
_saved: dict[str, tuple[Any, ...]] = {}
_save_warned: set[str] = set()


def save_last_known(
    state: RoutingState,
    stable_values: dict[str, Any] | None,
    pinned_values: dict[str, Any] | None = None,
) -> bool:
    """Keep the routing state just read in its file (temp file + ``os.replace``: a reader
    sees the old file or the new one, never half of one). Never raises: a state file that
    cannot be written is logged once per directory, and routing goes on.

    Returns whether the file was written (False: unchanged since this process wrote it,
    or it could not be written).
    """
    key = (state.revision, state.stable, state.pinned, state.updated_at)
    path = state_file(state.pipeline)
    if _saved.get(str(path)) == key:
        return False
    body = {
        "pipeline": state.pipeline,
        "state": state.model_dump(mode="json"),
        "stable_values": stable_values,
        "pinned_values": pinned_values,
        "written_at": time.time(),
        "host": HOST,
        "pid": os.getpid(),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))
        os.replace(tmp, path)
        tmp = None
    except (OSError, TypeError, ValueError) as exc:
        where = str(path.parent)
        if where not in _save_warned:
            _save_warned.add(where)
            logger.warning(
                "cannot keep the routing state in %s (GENOPT_STATE_DIR): %s; a fresh process "
                "that cannot reach the Prefect API will use the code defaults",
                where,
                exc,
            )
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _saved[str(path)] = key
    return True


def load_last_known(pipeline: str) -> LastKnown | None:
    """The routing state kept in ``pipeline``'s state file, or None (no file, or a file
    that does not hold one: it is ignored, with a warning)."""
    path = state_file(pipeline)
    try:
        raw = orjson.loads(path.read_bytes())
        state = RoutingState.model_validate(raw["state"])
        if state.pipeline != pipeline:
            raise ValueError(f"it holds the state of {state.pipeline!r}")
        stable_values = raw.get("stable_values")
        pinned_values = raw.get("pinned_values")
        for values in (stable_values, pinned_values):
            if values is not None and not isinstance(values, dict):
                raise ValueError("param set values are not an object")
        return LastKnown(
            state=state,
            stable_values=stable_values,
            pinned_values=pinned_values,
            written_at=float(raw.get("written_at") or 0.0),
            host=str(raw.get("host") or ""),
            pid=int(raw.get("pid") or 0),
        )
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a bad file is no worse than no file
        logger.warning("ignoring the routing state file %s: %s", path, exc)
        return None
