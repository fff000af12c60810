"""One error tree: every exception prefect-genopt raises is a :class:`GenoptError`.

Catch a *kind* (``except genopt.errors.BusyError``) instead of a list of classes.
Each concrete class lives beside the code that raises it, under its old name (a
class that moved with its module is still importable from the old path), and keeps the
builtin base it always had (``ValueError``, ``TimeoutError``,
``OSError``...), so ``except ValueError`` and friends catch what they caught before.
The kinds themselves add no builtin base: a kind with one would quietly make some
classes catchable by builtin clauses that never caught them (an ``EvidenceError``,
a ``RuntimeError``, is "not found" but not a ``LookupError``).

The tree (kind, then its classes with their builtin base and module)::

    * GenoptError
      x BadInputError        the request or value given cannot be used as it is
        - CLIError                                     cli
        - FeedbackError (ValueError)                   feedback (defined in records)
        - OTLPDecodeError (ValueError)                 warehouse.otlp
          · UnsupportedMediaTypeError, PayloadTooLargeError
        - RolloutError (ValueError)                    rollout.controller
        - ExperienceError (ValueError)                 replay.experiences
        - ProposalError (ValueError)                   proposals.proposals
        - SuggestionError (ValueError)                 optimize.validate
        - ReplyError (ValueError)                      optimize.llm (a model's unusable answer)
        - TunablesDefinitionError (ValueError)         tunables (a default its field refuses)
      x NotFoundError        something named does not exist (yet)
        - WarehouseMissingError (FileNotFoundError)    warehouse.access
        - UnknownRunError (ValueError; a FeedbackError) feedback
        - EvidenceError (RuntimeError)                 optimize.evidence
      x ConflictError        the current state does not allow it
        - RolloutStateError (ValueError)               rollout.state
        - StaleStateError (RuntimeError)               rollout.store
        - SchemaTooNewError (RuntimeError)             warehouse.schema (a newer genopt's file)
      x BusyError            another holder kept what is needed for too long
        - WarehouseBusyError (TimeoutError)            warehouse.access
        - LockTimeout (TimeoutError)                   locks
      x UnavailableError     a dependency failed or is down
        - RoutingUnavailable (RuntimeError)            rollout.store (the Prefect API)
          · PrefectUnavailable ("Prefect API unreachable at URL")
        - LLMTimeout (TimeoutError)                    optimize.llm (an LLM provider)
        - LLMCallError (RuntimeError)                  optimize.llm
        - LocalModelError (RuntimeError)               local_model (the embedded model)
        - SpoolError (OSError)                         spool (its disk)
        - WarehouseWriteError (OSError)                warehouse.ingest (its disk)
        - WarehouseCorruptError (a duckdb.IOException) warehouse.access (a damaged file)
        - PandasMissingError (ImportError)             warehouse.warehouse (Warehouse.df())
      x BudgetError          a limit the user set stops the work
        - BudgetExhausted (RuntimeError)               optimize.llm
      x GateStoppedError     the replay gate judged a candidate worse than stable
        - GateStopped (a RolloutError)                 rollout.controller
      x GateSkippedError     the replay gate could not run, so nothing was rolled out
        - GateSkipped (a RolloutError)                 rollout.controller

The ``genopt`` command turns a kind into its exit status in one table
(:data:`prefect_genopt.cli._errors.EXIT_CODES`). This module imports nothing, so
any module may import it.

Example:
    >>> from prefect_genopt.errors import BusyError, GenoptError
    >>> class PoolBusy(BusyError, TimeoutError):
    ...     '''The pool stayed taken.'''
    >>> try:
    ...     raise PoolBusy("pool taken for 30 s")
    ... except GenoptError as exc:
    ...     print(type(exc).__name__, isinstance(exc, TimeoutError))
    PoolBusy True
"""

from __future__ import annotations

__all__ = [
    "GenoptError",
    "BadInputError",
    "NotFoundError",
    "ConflictError",
    "BusyError",
    "UnavailableError",
    "BudgetError",
    "GateStoppedError",
    "GateSkippedError",
]


class GenoptError(Exception):
    """The base of every error prefect-genopt raises."""


class BadInputError(GenoptError):
    """The request or value given cannot be used as it is; the message says why.

    Covers command-line arguments, feedback, param sets, rollout plans, OTLP bodies
    and a model's answer (input the optimizer was given)."""


class NotFoundError(GenoptError):
    """Something named does not exist, or not yet: a run, a warehouse file, evidence."""


class ConflictError(GenoptError):
    """The current state does not allow the change (a second rollout, a stale pointer)."""


class BusyError(GenoptError):
    """Another holder kept what is needed (the warehouse file, a pipeline lock) for longer
    than the wait allowed; trying again later can succeed."""


class UnavailableError(GenoptError):
    """A dependency failed or is down: the Prefect API, an LLM provider, the embedded
    model, the spool's disk."""


class BudgetError(GenoptError):
    """A limit the user set (tokens, USD) does not allow the work to go on."""


class GateStoppedError(GenoptError):
    """The replay gate judged a candidate worse than stable: nothing was rolled out.

    A verdict rather than a fault; ``genopt rollout start`` exits 3 on it."""


class GateSkippedError(GenoptError):
    """The replay gate could not run (no replayable run, an entrypoint that does not
    import...), so the candidate was not rolled out: no safety net, no start.

    ``genopt rollout start`` exits 4 on it; ``--no-gate`` starts without the gate."""
