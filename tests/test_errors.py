"""One error tree: every exception class the package defines is a GenoptError of one kind,
and keeps its old name, module and builtin bases."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import prefect_genopt
from prefect_genopt import errors as e

#: class name -> (defining module, kind, the builtin base it had before the tree)
TREE: dict[str, tuple[str, type[e.GenoptError], type[BaseException]]] = {
    "CLIError": ("prefect_genopt.cli", e.BadInputError, Exception),
    "FeedbackError": ("prefect_genopt.feedback", e.BadInputError, ValueError),
    "UnknownRunError": ("prefect_genopt.feedback", e.NotFoundError, ValueError),
    "OTLPDecodeError": ("prefect_genopt.warehouse.otlp", e.BadInputError, ValueError),
    "ReceiverConfigError": ("prefect_genopt.warehouse.receiver", e.BadInputError, ValueError),
    "UnsupportedMediaTypeError": ("prefect_genopt.warehouse.otlp", e.BadInputError, ValueError),
    "PayloadTooLargeError": ("prefect_genopt.warehouse.otlp", e.BadInputError, ValueError),
    "RolloutError": ("prefect_genopt.rollout.controller", e.BadInputError, ValueError),
    "GateStopped": ("prefect_genopt.rollout.controller", e.GateStoppedError, ValueError),
    "GateSkipped": ("prefect_genopt.rollout.controller", e.GateSkippedError, ValueError),
    "ExperienceError": ("prefect_genopt.replay.experiences", e.BadInputError, ValueError),
    "ProposalError": ("prefect_genopt.proposals.proposals", e.BadInputError, ValueError),
    "SuggestionError": ("prefect_genopt.optimize.validate", e.BadInputError, ValueError),
    "ReplyError": ("prefect_genopt.optimize.llm", e.BadInputError, ValueError),
    "TunablesDefinitionError": ("prefect_genopt.tunables", e.BadInputError, ValueError),
    "WarehouseMissingError": (
        "prefect_genopt.warehouse.access",
        e.NotFoundError,
        FileNotFoundError,
    ),
    "EvidenceError": ("prefect_genopt.optimize.evidence", e.NotFoundError, RuntimeError),
    "SchemaTooNewError": ("prefect_genopt.warehouse.schema", e.ConflictError, RuntimeError),
    "WarehouseCorruptError": ("prefect_genopt.warehouse.access", e.UnavailableError, Exception),
    "RolloutStateError": ("prefect_genopt.rollout.state", e.ConflictError, ValueError),
    "StaleStateError": ("prefect_genopt.rollout.store", e.ConflictError, RuntimeError),
    "SideEffectSkipped": ("prefect_genopt.pipeline", e.ConflictError, RuntimeError),
    "WarehouseBusyError": ("prefect_genopt.warehouse.access", e.BusyError, TimeoutError),
    "LockTimeout": ("prefect_genopt.locks", e.BusyError, TimeoutError),
    "RoutingUnavailable": ("prefect_genopt.rollout.store", e.UnavailableError, RuntimeError),
    "PrefectUnavailable": ("prefect_genopt.rollout.store", e.UnavailableError, RuntimeError),
    "LLMTimeout": ("prefect_genopt.optimize.llm", e.UnavailableError, TimeoutError),
    "LLMCallError": ("prefect_genopt.optimize.llm", e.UnavailableError, RuntimeError),
    "LocalModelError": ("prefect_genopt.local_model", e.UnavailableError, RuntimeError),
    "SpoolError": ("prefect_genopt.spool", e.UnavailableError, OSError),
    "WarehouseWriteError": ("prefect_genopt.warehouse.ingest", e.UnavailableError, OSError),
    "PandasMissingError": ("prefect_genopt.warehouse.warehouse", e.UnavailableError, ImportError),
    "BudgetExhausted": ("prefect_genopt.optimize.llm", e.BudgetError, RuntimeError),
}

#: exception classes that are not errors the library raises to its callers
NOT_IN_TREE = {
    # an HTTP status carried from a request handler to its reply, never raised outside it
    "prefect_genopt.warehouse.receiver._HTTPError",
}

KINDS = (
    e.BadInputError,
    e.NotFoundError,
    e.ConflictError,
    e.BusyError,
    e.UnavailableError,
    e.BudgetError,
    e.GateStoppedError,
    e.GateSkippedError,
)


def _defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the package, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    names = [prefect_genopt.__name__] + [
        m.name
        for m in pkgutil.walk_packages(prefect_genopt.__path__, prefix="prefect_genopt.")
        if not m.name.endswith("__main__")  # importing it would run the command
    ]
    for name in names:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
                and obj.__module__ != e.__name__
            ):
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def _builtin_ancestors(cls: type) -> set[type]:
    return {c for c in cls.__mro__ if c.__module__ == "builtins"}


def test_every_exception_the_package_defines_is_in_the_tree() -> None:
    found = _defined_exceptions()
    outside = sorted(qn for qn, cls in found.items() if not issubclass(cls, e.GenoptError))
    assert set(outside) == NOT_IN_TREE, "an exception class outside the GenoptError tree"
    listed = {f"{module}.{name}" for name, (module, _, _) in TREE.items()}
    assert set(found) - NOT_IN_TREE == listed, "TREE (this test) lists every error class"


@pytest.mark.parametrize("name", sorted(TREE))
def test_each_error_keeps_name_module_and_builtin_base(name: str) -> None:
    module, kind, builtin = TREE[name]
    cls = getattr(importlib.import_module(module), name)
    assert cls.__name__ == name and cls.__module__ == module
    assert issubclass(cls, kind) and issubclass(cls, e.GenoptError)
    # exactly the builtin ancestors it had: no `except` clause catches more or less than before
    assert _builtin_ancestors(cls) == set(builtin.__mro__)
    kinds = [k for k in KINDS if issubclass(cls, k)]
    if name == "UnknownRunError":  # a FeedbackError (bad input) about a run that does not exist
        assert kinds == [e.BadInputError, e.NotFoundError]
    elif name == "GateStopped":  # a RolloutError (bad input) that is the gate's verdict
        assert kinds == [e.BadInputError, e.GateStoppedError]
    elif name == "GateSkipped":  # a RolloutError (bad input): the gate could not run
        assert kinds == [e.BadInputError, e.GateSkippedError]
    else:
        assert kinds == [kind]


def test_old_except_clauses_still_catch() -> None:
    from prefect_genopt.feedback import FeedbackError, UnknownRunError
    from prefect_genopt.rollout.controller import GateStopped, RolloutError
    from prefect_genopt.warehouse import WarehouseMissingError

    with pytest.raises(FeedbackError):
        raise UnknownRunError("no flow run")
    with pytest.raises(RolloutError):
        raise GateStopped("worse")
    with pytest.raises(FileNotFoundError):
        raise WarehouseMissingError("no warehouse")
    with pytest.raises(e.NotFoundError):
        raise WarehouseMissingError("no warehouse")


def test_the_kinds_add_no_builtin_base_and_the_module_imports_nothing() -> None:
    for kind in KINDS:
        assert kind.__bases__ == (e.GenoptError,)
    assert e.GenoptError.__bases__ == (Exception,)
    tree = ast.parse(Path(e.__file__).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [getattr(n, "module", None) for n in imports] == ["__future__"]


# -- the CLI's one table: kind -> exit status ------------------------------------------------


@pytest.mark.parametrize("name", sorted(TREE))
def test_every_error_has_its_exit_status(name: str) -> None:
    from prefect_genopt.cli._errors import exit_status

    module, _, _ = TREE[name]
    exc = getattr(importlib.import_module(module), name)("the message")
    expected = {"GateStopped": (3, "stopped"), "GateSkipped": (4, "gate not run")}
    assert exit_status(exc) == expected.get(name, (2, "error"))


def test_the_table_in_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() prints `genopt COMMAND: LABEL: message` and returns the table's status; an
    error outside the table propagates (a traceback, as before the tree)."""
    import duckdb

    from prefect_genopt.cli import EXIT_GATE_STOPPED, CLIError, main
    from prefect_genopt.cli import ingest as ingest_command
    from prefect_genopt.cli._errors import EXIT_GATE_SKIPPED
    from prefect_genopt.rollout.controller import GateSkipped, GateStopped
    from prefect_genopt.rollout.store import PrefectUnavailable

    def raising(exc: BaseException) -> None:
        def run(args: object, ctx: object) -> int:
            raise exc

        monkeypatch.setattr(ingest_command, "run", run)

    argv = ["--warehouse", str(tmp_path / "w.duckdb"), "ingest"]
    for exc, code, line in [
        (GateStopped("worse than stable"), 3, "genopt ingest: stopped: worse than stable"),
        (GateSkipped("no replayable run"), 4, "genopt ingest: gate not run: no replayable run"),
        (
            PrefectUnavailable("Prefect API unreachable at http://h/api: refused"),
            2,
            "genopt ingest: error: Prefect API unreachable at http://h/api: refused",
        ),
        (CLIError("bad option"), 2, "genopt ingest: error: bad option"),
        (e.BusyError("locked"), 2, "genopt ingest: error: locked"),
        (e.GenoptError("any"), 2, "genopt ingest: error: any"),
        (duckdb.CatalogException("no table"), 2, "genopt ingest: SQL error: no table"),
    ]:
        raising(exc)
        assert main(argv) == code
        assert capsys.readouterr().err.strip() == line
    assert (EXIT_GATE_STOPPED, EXIT_GATE_SKIPPED) == (3, 4)
    raising(KeyError("a bug"))
    with pytest.raises(KeyError, match="a bug"):
        main(argv)
