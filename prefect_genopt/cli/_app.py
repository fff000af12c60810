"""The ``genopt`` parser and entry point: one module per command, loaded light.

Each command lives in ``prefect_genopt.cli.<command>`` with a ``register(sub)``
that adds its parser (a single command, or a group of verbs, see
:mod:`prefect_genopt.cli._utilities`). Command modules import only the standard
library at load time; Prefect, DuckDB, litellm and OpenTelemetry are imported
inside the command that runs, so ``genopt --help`` loads none of them.

:func:`main` resolves the settings once (``--warehouse`` over ``GENOPT_WAREHOUSE``)
into a :class:`Context` handed to the command, which passes them on; the process
environment is left as it was. Errors become exit statuses in one table
(:mod:`prefect_genopt.cli._errors`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_genopt.cli._errors import exit_status, known_error

if TYPE_CHECKING:
    from prefect_genopt.settings import GenoptSettings
    from prefect_genopt.warehouse import Warehouse

__all__ = ["COMMANDS", "Context", "build_parser", "main"]

#: The commands, in the order ``genopt --help`` lists them (each a module of this package).
COMMANDS = (
    "sql",
    "feedback",
    "ingest",
    "status",
    "serve",
    "optimize",
    "proposals",
    "rollout",
    "export",
    "experiences",
    "instruction",
    "report",
)

EPILOG = """\
Everything reads and writes the warehouse named by --warehouse, else GENOPT_WAREHOUSE,
else $PREFECT_HOME/genopt/warehouse.duckdb. Tables: pipelines, runs, spans, feedback,
param_sets, pending_feedback, proposals, proposal_events, rollouts, rollout_events,
rollout_analyses, replay_gates, proposal_ratings; views: kpi_by_param_set_day,
llm_usage, run_summary, param_set_lineage. The optimizer calls GENOPT_MODEL (any litellm
model string), else the embedded local model (pip install 'prefect-genopt[local]').
Commands with verbs (proposals, rollout, export, experiences, instruction) take their
options before or after the verb: genopt rollout --json status triage.
"""


@dataclass(frozen=True)
class Context:
    """What a command is given besides its arguments: the settings it runs with.

    Args:
        settings: ``GENOPT_*`` settings, with ``--warehouse`` applied.
    """

    settings: GenoptSettings

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        """The context of a parsed command line."""
        from prefect_genopt.settings import GenoptSettings, get_settings

        if args.warehouse:
            path = Path(args.warehouse).expanduser().resolve()
            return cls(GenoptSettings(warehouse=path))
        return cls(get_settings())

    @property
    def warehouse_path(self) -> Path:
        """The warehouse file."""
        return self.settings.warehouse_path

    def warehouse(self, *, read_only: bool = True, ingest: bool = True) -> Warehouse:
        """A :class:`~prefect_genopt.warehouse.Warehouse` on this context's file and spool."""
        from prefect_genopt.warehouse import Warehouse

        return Warehouse(
            self.warehouse_path, read_only, ingest=ingest, spool_dir=self.settings.spool_dir
        )

    @contextlib.contextmanager
    def running_pipelines(self) -> Iterator[None]:
        """Around code that runs pipelines or Prefect flows in this process (the replay
        gate, the optimizer flow): they read the settings themselves, so this context's
        are made current for the block (:func:`~prefect_genopt.settings.use_settings`),
        and the spans they queued are written to this context's spool before it ends."""
        from prefect_genopt.settings import use_settings

        with use_settings(self.settings):
            try:
                yield
            finally:
                tracing = sys.modules.get("prefect_genopt.tracing")
                processor = tracing.get_processor() if tracing is not None else None
                if processor is not None:
                    processor.force_flush()


def build_parser() -> argparse.ArgumentParser:
    """The ``genopt`` argument parser."""
    from prefect_genopt import __version__

    p = argparse.ArgumentParser(
        prog="genopt",
        description="prefect-genopt: trace warehouse, feedback and optimisation of Prefect "
        "pipelines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"prefect-genopt {__version__}")
    p.add_argument(
        "--warehouse",
        metavar="PATH",
        help="the DuckDB warehouse file (overrides GENOPT_WAREHOUSE)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``genopt`` console script.

    Returns the exit status; argparse exits by itself (``SystemExit``) on ``--help``,
    ``--version`` and a command line it cannot parse (status 2).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, Context.from_args(args)))
    except Exception as raised:
        exc = known_error(raised)  # e.g. the Prefect API down: "Prefect API unreachable at URL"
        status = exit_status(exc)
        if status is None:
            raise
        code, label = status
        print(f"genopt {args.command}: {label}: {exc}", file=sys.stderr)
        return code
    finally:
        # rollout verbs, `optimize` and `proposals reject` emit genopt.rollout.* and
        # genopt.proposal.* events; the events module is only loaded by the commands that can
        events = sys.modules.get("prefect_genopt.events")
        if events is not None:
            events.flush()
