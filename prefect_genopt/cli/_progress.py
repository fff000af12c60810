"""Progress of long commands on stderr: a bar with an ETA on a terminal, plain lines
otherwise (a log file, CI, a pipe).

A :class:`Progress` takes what the work says: free lines (:meth:`Progress.say`) and
counts (:meth:`Progress.update`: a stage, items done, items in all). A line that
carries counts as ``N/M`` (the optimizer's ``update 2/3``, ``draft 1/4``,
``replaying c_1 (drafts): 12/48 items``) counts too: its stage is the text before its
first ``N/M``, its counts the last ``N/M``. Counts continue one bar while the total holds
and the count does not go back; otherwise a new bar (and ETA) starts.

* On a terminal, rich (which Prefect brings) draws one bar for the current stage
  (description, bar, done/total, elapsed, time remaining); lines without counts are
  printed above it, and so are counted lines as often as in plain mode (the bar shows
  only their stage).
* Otherwise every line without counts is printed; counted lines are printed at most
  every ``every`` seconds per stage, and at the end of a stage, with an ETA appended
  when the line has none.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(out, tty=False, every=0) as p:
    ...     p.say("evidence: 30 items")
    ...     p.update("harvesting", 4, 4)
    >>> print(out.getvalue().strip())
    evidence: 30 items
    harvesting: 4/4
    >>> counts("selection rung 1/3: candidate 2/8 c_1; 40/200 items, ETA 5s")
    ('selection rung', 40, 200)
    >>> counts("still waiting for m (15 s)") is None
    True
"""

from __future__ import annotations

import re
import sys
import time
from types import TracebackType
from typing import IO, Any

__all__ = ["Progress", "counts"]

_COUNT = re.compile(r"(\d+)/(\d+)")


def counts(line: str) -> tuple[str, int, int] | None:
    """``(stage, done, total)`` of a line that carries counts, else None."""
    found = list(_COUNT.finditer(line))
    if not found:
        return None
    done, total = int(found[-1].group(1)), int(found[-1].group(2))
    if total <= 0 or done > total:
        return None
    stage = line[: found[0].start()].strip().rstrip(":;,").strip() or "working"
    return stage, done, total


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of one long command (a context manager).

    Args:
        stream: Where it goes (default: stderr).
        tty: Draw a bar (default: whether ``stream`` is a terminal).
        every: Plain mode: least seconds between two counted lines of one stage.
    """

    def __init__(
        self, stream: IO[str] | None = None, *, tty: bool | None = None, every: float = 5.0
    ):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if tty is None and callable(isatty) else bool(tty)
        self.every = every
        self._bar: Any = None
        self._task: Any = None
        self._stage: tuple[int, int] | None = None  # (total, done) of the current bar
        self._started = 0.0
        self._first_done = 0
        self._last_said = 0.0

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def say(self, line: str) -> None:
        """A line of the work: counted, or printed (see the module docstring)."""
        found = counts(line)
        if found is not None:
            self.update(*found, line=line)
        elif self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            self._print(line)

    def update(self, stage: str, done: int, total: int, line: str | None = None) -> None:
        """``done`` of ``total`` items of ``stage`` are done."""
        now = time.monotonic()
        # one bar while the total holds and the count does not go back (a stage's text may
        # change as it goes: "read kpis: 1/7", "read usage: 7/7"; each candidate's replay
        # starts its own count of the same total)
        new = self._stage is None or total != self._stage[0] or done < self._stage[1]
        if new:
            self._started, self._first_done = now, done
        self._stage = (total, done)
        finished = done >= total
        due = new or finished or now - self._last_said >= self.every
        if self._bar is not None:
            label = stage if len(stage) <= 32 else stage[:31] + "…"  # room for the bar
            if new:
                if self._task is not None:
                    self._bar.remove_task(self._task)
                self._task = self._bar.add_task(label, total=total, completed=done)
            else:
                self._bar.update(self._task, description=label, completed=done)
            if line is not None and due:  # the whole line too, now and then
                self._last_said = now
                self._bar.console.print(line, markup=False, highlight=False)
            return
        if not due:
            return
        text = line or f"{stage}: {done}/{total}"
        eta = self.eta(done, total, now)
        if eta is not None and not finished and "ETA" not in text:
            text += f" (ETA {_duration(eta)})"
        self._print(text)

    def eta(self, done: int, total: int, now: float | None = None) -> float | None:
        """Seconds left in the current stage at the pace since it began (None: no pace yet)."""
        now = time.monotonic() if now is None else now
        moved = done - self._first_done
        if moved <= 0:
            return None
        return (now - self._started) / moved * (total - done)

    def _print(self, text: str) -> None:
        self._last_said = time.monotonic()
        print(text, file=self.stream, flush=True)
