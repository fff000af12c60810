"""Tracing: genopt's span processors and exporters, and installing them.

Prefect 3 already opens one OpenTelemetry span per flow run and per task run,
but through the no-op API until an SDK ``TracerProvider`` exists.
:func:`setup_tracing` installs one (or joins the application's own) with two
span processors, each with one job, as the OTel SDK separates enriching spans
from its ``BatchSpanProcessor``:

* :class:`RunContextSpanProcessor` stamps every span started inside a pipeline
  run with the run id, pipeline, param-set id and arm (Prefect's task spans do
  not carry the flow-run id);
* :class:`ExportSpanProcessor` hands finished spans to a
  :class:`~opentelemetry.sdk.trace.export.SpanExporter` (the
  :class:`SpoolSpanExporter` by default, the standard OTLP exporter with
  ``GENOPT_OTLP_ENDPOINT``) through a bounded queue and a background thread, so
  the task thread only enqueues; run boundaries (run start and end, flow spans)
  are exported synchronously, so a killed run keeps its record. A span that
  does not fit in the queue, or whose export fails, is dropped and counted, and
  reported as a ``genopt.drops`` span so ``genopt status`` shows it; a report
  that cannot be written (the disk is full) stays counted in memory and is
  written once the spool can be written again. A failed export logs one warning
  per cause per run, no traceback (:mod:`prefect_genopt.incidents`): the run's
  end record carries the counts to ``runs.genopt_errors``.

:class:`GenoptSpanProcessor` chains the two in one processor, for a provider
built by hand. :func:`setup_tracing` also starts tracing litellm calls
(:mod:`prefect_genopt.llm_spans`).

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> exporter = InMemorySpanExporter()
    >>> provider = TracerProvider()
    >>> provider.add_span_processor(RunContextSpanProcessor())
    >>> provider.add_span_processor(ExportSpanProcessor(exporter))
    >>> with provider.get_tracer("demo").start_as_current_span("step"):
    ...     pass
    >>> [s.name for s in exporter.get_finished_spans()]
    ['step']
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, TraceFlags

from prefect_genopt import incidents, llm_spans, semconv, spool
from prefect_genopt.context import item_var, run_var
from prefect_genopt.records import from_readable_span
from prefect_genopt.settings import get_settings

__all__ = [
    "RunContextSpanProcessor",
    "ExportSpanProcessor",
    "GenoptSpanProcessor",
    "SpoolSpanExporter",
    "setup_tracing",
    "get_processor",
    "get_stamper",
    "tracer",
    "DROPS_SPAN",
]

logger = logging.getLogger("prefect_genopt.tracing")

DROPS_SPAN = semconv.DROPS_SPAN
DROPPED = semconv.DROPPED
TRACER_NAME = semconv.TRACER_NAME
_ids = RandomIdGenerator()


class SpoolSpanExporter(SpanExporter):
    """Writes finished spans to this process's spool file, as ``span`` records.

    Args:
        directory: The spool directory; default: the configured one, looked up
            at every export (so a changed ``GENOPT_WAREHOUSE`` is followed).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._local = threading.local()
        self._failing = False

    @property
    def last_error(self) -> BaseException | None:
        """Why this thread's last :meth:`export` failed (None after a success): the
        :class:`ExportSpanProcessor` counts the lost spans under its cause."""
        return getattr(self._local, "error", None)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        settings = get_settings()
        records = [from_readable_span(s, settings.max_value_chars) for s in spans]
        try:
            spool.append(records, self.directory or settings.spool_dir)
        except spool.SpoolError as exc:
            self._local.error = exc
            self._failing = True
            return SpanExportResult.FAILURE
        self._local.error = None
        if self._failing:
            self._failing = False
            incidents.recovered()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        spool.close_all()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class RunContextSpanProcessor(SpanProcessor):
    """Stamps genopt's run context on every span started inside a pipeline run.

    A span gets the run id when it is a Prefect flow-run span, when it starts
    inside a pipeline run (the run context variable), or when its parent got
    one (Prefect's task spans do not carry the flow-run id). Spans of the run
    of this context also get its pipeline, param-set id and arm (an item's own
    arm inside a canary). It only writes attributes: exporting is
    :class:`ExportSpanProcessor`'s work, added after it to the same provider.

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        ...     InMemorySpanExporter,
        ... )
        >>> exporter = InMemorySpanExporter()
        >>> provider = TracerProvider()
        >>> provider.add_span_processor(RunContextSpanProcessor())
        >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
        >>> flow = {semconv.PREFECT_RUN_TYPE: "flow", semconv.PREFECT_RUN_ID: "run-1"}
        >>> with provider.get_tracer("demo").start_as_current_span("flow", attributes=flow):
        ...     with provider.get_tracer("demo").start_as_current_span("task"):
        ...         pass
        >>> [s.attributes[semconv.RUN_ID] for s in exporter.get_finished_spans()]
        ['run-1', 'run-1']
    """

    def __init__(self) -> None:
        self._run_ids: dict[int, str] = {}

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        attrs = span.attributes or {}
        rc = run_var.get()
        run_id: str | None = None
        if attrs.get(semconv.PREFECT_RUN_TYPE) == "flow":
            run_id = str(attrs.get(semconv.PREFECT_RUN_ID))
        elif rc is not None:
            run_id = rc.run_id
        elif span.parent is not None:
            run_id = self._run_ids.get(span.parent.span_id)
        if run_id is None:
            return
        self._run_ids[span.context.span_id] = run_id
        if semconv.RUN_ID not in attrs:
            span.set_attribute(semconv.RUN_ID, run_id)
        if rc is not None and rc.run_id == run_id and semconv.PIPELINE not in attrs:
            ps_id, arm = rc.param_set_id, rc.arm
            item = item_var.get()
            if item is not None and item[0] == run_id:
                ps_id, arm = item[1], item[2]
            span.set_attributes(
                {
                    semconv.PIPELINE: rc.pipeline,
                    semconv.PARAM_SET_ID: ps_id,
                    semconv.ARM: arm,
                }
            )

    def on_end(self, span: ReadableSpan) -> None:
        self._run_ids.pop(span.context.span_id, None)


class ExportSpanProcessor(SpanProcessor):
    """Hands finished spans to an exporter, synchronously or through a queue, counting losses.

    It reads spans as they are; stamping them is :class:`RunContextSpanProcessor`'s
    work. A span that does not fit in the queue, or whose export fails, is
    counted in :attr:`dropped`; :meth:`force_flush` reports new drops as one
    ``genopt.drops`` span.

    Args:
        exporter: Where finished spans go.
        queue_size: ``None`` exports synchronously in ``on_end``. A number
            buffers up to that many spans for a background thread that exports
            them in batches (the task thread only enqueues); a span that does
            not fit is dropped and counted.
        batch_size: Most spans per background export call.
        interval: Seconds the background thread waits for a batch to fill.
        immediate: With a queue, spans for which this returns True are still
            exported synchronously (genopt's run boundaries, so a killed run
            keeps its record).

    The background thread keeps the processor alive until :meth:`shutdown`;
    the hook that restarts it in a forked child holds only a weak reference.

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        ...     InMemorySpanExporter,
        ... )
        >>> exporter = InMemorySpanExporter()
        >>> provider = TracerProvider()
        >>> provider.add_span_processor(ExportSpanProcessor(exporter))
        >>> with provider.get_tracer("demo").start_as_current_span("step"):
        ...     pass
        >>> [s.name for s in exporter.get_finished_spans()]
        ['step']
    """

    def __init__(
        self,
        exporter: SpanExporter,
        queue_size: int | None = None,
        batch_size: int = 512,
        interval: float = 1.0,
        immediate: Callable[[ReadableSpan], bool] | None = None,
    ) -> None:
        self.exporter = exporter
        self.immediate = immediate
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.interval = interval
        self.dropped = 0
        self._reported_drops = 0
        self._report_lock = threading.Lock()
        self._report_failing = False
        self._lock = threading.Lock()
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._exporting = 0
        self._stop = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        if queue_size is not None:
            self._start_thread()
            self._register_fork_hook()

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        if self.queue_size is None or (self.immediate is not None and self.immediate(span)):
            self._export([span])
            return
        with self._lock:
            full = len(self._queue) >= self.queue_size
            if full:
                self.dropped += 1
            else:
                self._queue.append(span)
                if len(self._queue) >= self.batch_size:
                    self._wake.notify()
        if full:
            run_id = (span.attributes or {}).get(semconv.RUN_ID)
            incidents.note(
                "queue_full",
                run_id=str(run_id) if run_id is not None else None,
                detail=f"more than {self.queue_size} spans waiting (GENOPT_SPAN_QUEUE_SIZE)",
            )

    def _start_thread(self) -> None:
        self._stop = False
        self._thread = threading.Thread(
            target=self._worker, name="genopt-span-exporter", daemon=True
        )
        self._thread.start()

    def _register_fork_hook(self) -> None:
        """Restart the background thread in a forked child, without keeping ``self`` alive.

        ``os.register_at_fork`` hooks cannot be removed, so the hook holds a weak
        reference: a processor nothing else refers to is still collected.
        """
        after_fork = weakref.WeakMethod(self._after_fork)

        def after_in_child() -> None:
            if (reinit := after_fork()) is not None:
                reinit()

        os.register_at_fork(after_in_child=after_in_child)

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._queue.clear()
        self._exporting = 0
        self._thread = None
        if not self._closed:
            self._start_thread()

    def _worker(self) -> None:
        while True:
            with self._lock:
                if not self._queue and not self._stop:
                    self._wake.wait(self.interval)
                if self._stop and not self._queue:
                    self._idle.notify_all()
                    return
                batch = [
                    self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
                ]
                self._exporting += 1
            try:
                if batch:
                    self._export(batch)
            finally:
                with self._lock:
                    self._exporting -= 1
                    if not self._queue and not self._exporting:
                        self._idle.notify_all()

    def _export(self, spans: list[ReadableSpan], count: bool = True) -> bool:
        """Export without tracing the export itself; a failure counts the spans as dropped
        (and, by run, under its cause: one warning per cause per run, no traceback)."""
        token = otel_context.attach(
            otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        error: BaseException | None = None
        try:
            ok = self.exporter.export(spans) == SpanExportResult.SUCCESS
            if not ok:
                error = getattr(self.exporter, "last_error", None)
        except Exception as exc:  # noqa: BLE001 - an exporter must never break the pipeline
            ok, error = False, exc
        finally:
            otel_context.detach(token)
        if not ok and count:
            with self._lock:
                self.dropped += len(spans)
            self._note_lost(spans, error)
        return ok

    @staticmethod
    def _note_lost(spans: list[ReadableSpan], error: BaseException | None) -> None:
        """Count lost spans per run under their cause (:mod:`prefect_genopt.incidents`)."""
        by_run: collections.Counter[str | None] = collections.Counter()
        for span in spans:
            run_id = (span.attributes or {}).get(semconv.RUN_ID)
            by_run[str(run_id) if run_id is not None else None] += 1
        cause = incidents.cause_of(error)
        if cause == "internal":  # the exporter raised: not genopt's own bookkeeping
            cause = "export_failed"
        for run_id, n in by_run.items():
            incidents.note(
                cause,
                run_id=run_id,
                count=n,
                detail=f"{n} span(s) not stored: {error or 'the exporter failed'}",
                exc=error,
            )

    def _report_drops(self) -> None:
        """Write new drops as one ``genopt.drops`` span. A report that cannot be written
        leaves them counted: the next flush (a run's end, an ingest, exit) reports them."""
        with self._report_lock:
            with self._lock:
                new = self.dropped - self._reported_drops
            if new <= 0:
                return
            if self._write_drops_report(new):
                with self._lock:
                    self._reported_drops += new
                self._report_failing = False
                # the loss itself was warned once per cause per run (incidents)
                logger.info("genopt reported %d dropped span(s) (genopt status)", new)
            elif not self._report_failing:
                self._report_failing = True
                logger.info(
                    "genopt could not report %d dropped span(s) yet; they stay counted and "
                    "are reported once the spool can be written",
                    new,
                )

    def _write_drops_report(self, new: int) -> bool:
        now = time.time_ns()
        report = ReadableSpan(
            name=DROPS_SPAN,
            context=SpanContext(
                trace_id=_ids.generate_trace_id(),
                span_id=_ids.generate_span_id(),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            ),
            attributes={DROPPED: new, semconv.HOST: spool.HOST, semconv.PID: os.getpid()},
            start_time=now,
            end_time=now,
            resource=Resource.get_empty(),
        )
        return self._export([report], count=False)

    def _drain(self, timeout: float) -> None:
        if self.queue_size is None or self._thread is None:
            return
        with self._lock:
            self._wake.notify()
            self._idle.wait_for(lambda: not self._queue and not self._exporting, timeout)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued, then report any new drops."""
        self._drain(timeout_millis / 1000)
        self._report_drops()
        self._drain(timeout_millis / 1000)
        return bool(self.exporter.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.force_flush()
        self._closed = True
        if self._thread is not None and self._pid == os.getpid():
            with self._lock:
                self._stop = True
                self._wake.notify()
            self._thread.join(timeout=30)
        self.exporter.shutdown()


class GenoptSpanProcessor(ExportSpanProcessor):
    """Both in one processor: stamps run context, then exports (for a provider built by hand).

    :func:`setup_tracing` adds a :class:`RunContextSpanProcessor` and an
    :class:`ExportSpanProcessor` to the provider instead; this class is the two
    chained, for code that adds one processor itself. Arguments are those of
    :class:`ExportSpanProcessor`.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        queue_size: int | None = None,
        batch_size: int = 512,
        interval: float = 1.0,
        immediate: Callable[[ReadableSpan], bool] | None = None,
    ) -> None:
        self.stamper = RunContextSpanProcessor()
        super().__init__(exporter, queue_size, batch_size, interval, immediate)

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.stamper.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.stamper.on_end(span)
        super().on_end(span)


_processor: ExportSpanProcessor | None = None
_stamper: RunContextSpanProcessor | None = None
_setup_lock = threading.Lock()


def _ca_session() -> object:
    """A ``requests`` session that keeps the CA bundle the exporter sets on it: a plain one
    lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace it on every request."""
    import requests

    class _KeepVerify(requests.Session):
        def merge_environment_settings(self, *args: object, **kwargs: object) -> dict:
            merged = super().merge_environment_settings(*args, **kwargs)
            merged["verify"] = self.verify
            return merged

    return _KeepVerify()


def _make_processor() -> ExportSpanProcessor | None:
    settings = get_settings()
    mode = settings.export_mode
    if mode == "none":
        return None
    if mode == "otlp":
        if not settings.otlp_endpoint:
            raise ValueError("GENOPT_EXPORT=otlp needs GENOPT_OTLP_ENDPOINT")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        token = settings.otlp_token.get_secret_value() if settings.otlp_token else None
        ca = settings.otlp_certificate
        exporter = OTLPSpanExporter(
            endpoint=endpoint,
            # GENOPT_OTLP_TOKEN: the receiver's (or a Collector's) bearer token
            headers={"Authorization": f"Bearer {token}"} if token else None,
            certificate_file=str(ca) if ca else None,
            session=_ca_session() if ca else None,  # type: ignore[arg-type]
        )
        return ExportSpanProcessor(exporter, queue_size=settings.span_queue_size)
    if settings.spool_flush_interval <= 0:
        return ExportSpanProcessor(SpoolSpanExporter())
    return ExportSpanProcessor(
        SpoolSpanExporter(),
        queue_size=settings.span_queue_size,
        interval=settings.spool_flush_interval,
        immediate=is_run_boundary,
    )


def is_run_boundary(span: ReadableSpan) -> bool:
    """Spans written at once: run start and end, flow-run spans, drop reports."""
    if span.name in (semconv.RUN_START_SPAN, semconv.RUN_END_SPAN, DROPS_SPAN):
        return True
    attrs = span.attributes or {}
    return attrs.get(semconv.PREFECT_RUN_TYPE) == "flow"


def setup_tracing(provider: TracerProvider | None = None) -> ExportSpanProcessor | None:
    """Install genopt's span processors (idempotent); returns the exporting one, or None when off.

    Adds a :class:`RunContextSpanProcessor` then an :class:`ExportSpanProcessor`
    to the application's SDK ``TracerProvider`` when it already installed one
    (or passes one); otherwise installs a new provider with them as the global
    one. Also traces litellm calls from now on (:func:`prefect_genopt.llm_spans.install`),
    whatever the export mode. Called by ``@genopt.pipeline`` and ``@genopt.task``
    at decoration time, so Prefect's flow span of the very first run is
    recorded too.
    """
    global _processor, _stamper
    llm_spans.install()
    with _setup_lock:
        if _processor is not None and provider is None:
            return _processor
        proc = _processor or _make_processor()
        if proc is None:
            return None
        stamper = _stamper or RunContextSpanProcessor()
        target = provider or trace.get_tracer_provider()
        if isinstance(target, TracerProvider):
            target.add_span_processor(stamper)
            target.add_span_processor(proc)
        elif isinstance(target, trace.ProxyTracerProvider):
            new = TracerProvider(
                resource=Resource.create(
                    {"service.name": os.environ.get("OTEL_SERVICE_NAME", "prefect-genopt")}
                )
            )
            new.add_span_processor(stamper)
            new.add_span_processor(proc)
            trace.set_tracer_provider(new)
        else:
            logger.warning(
                "genopt cannot record spans: the installed tracer provider %r is not an "
                "OpenTelemetry SDK TracerProvider; pass one to setup_tracing()",
                type(target).__name__,
            )
            return None
        _processor, _stamper = proc, stamper
        # the warehouse flushes the queue before it reads the spool (it does not import us)
        spool.add_flush_hook(_flush_queued)
        # Queued spans are written at exit even if the provider is not shut down then
        # (an application's provider may be created with shutdown_on_exit=False).
        atexit.register(proc.force_flush)
        return proc


def _flush_queued() -> None:
    """Export the spans queued in this process (a spool flush hook, see :func:`setup_tracing`)."""
    processor = _processor
    if processor is not None:
        processor.force_flush()


def get_processor() -> ExportSpanProcessor | None:
    """The exporting processor installed by :func:`setup_tracing`, if any (to flush it)."""
    return _processor


def get_stamper() -> RunContextSpanProcessor | None:
    """The stamping processor installed by :func:`setup_tracing`, if any."""
    return _stamper


def tracer() -> trace.Tracer:
    """genopt's tracer (for the run-start, LLM and drops spans)."""
    return trace.get_tracer(TRACER_NAME)
