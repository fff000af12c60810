"""The ``genopt`` command: thin over the library, one module per command.

Examples:
    genopt sql "select pipeline, status, count(*) from runs group by all"
    genopt sql "select * from kpi_by_param_set_day" --json
    genopt feedback 8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10 csat 4 --comment "slow"
    genopt ingest
    genopt status
    genopt serve --port 4318
    genopt optimize triage --max-updates 2
    genopt proposals triage
    genopt proposals reject pr_20261122_ab12cd --reason "too long"
    genopt rollout start triage --proposal pr_20261122_ab12cd --kpi correct
    genopt rollout status triage
    genopt rollout --json status triage
    genopt rollout pin triage ps_0123456789abcdef --reason "incident 42"
    genopt export reflections --out reflections.jsonl
    genopt experiences harvest triage --kpi correct
    genopt experiences list triage
    genopt instruction tune triage --every 5

Layout: :mod:`~prefect_genopt.cli._app` builds the parser and runs a command;
:mod:`~prefect_genopt.cli._utilities` makes command groups with verbs;
:mod:`~prefect_genopt.cli._output` prints tables, JSON and CSV;
:mod:`~prefect_genopt.cli._errors` maps errors to exit statuses;
:mod:`~prefect_genopt.cli._checks` refuses a pipeline the warehouse never saw and a read of a
warehouse that does not exist, in every command.
"""

from __future__ import annotations

from prefect_genopt.cli._app import build_parser, main
from prefect_genopt.cli._errors import EXIT_GATE_STOPPED as EXIT_GATE_STOPPED
from prefect_genopt.cli._output import format_table as format_table
from prefect_genopt.errors import BadInputError

__all__ = ["main", "build_parser"]


class CLIError(BadInputError):
    """A user-facing error: printed without a traceback, exit code 2."""
