"""Building blocks of the command groups: verbs, their arguments, argument types.

A *group* (``genopt rollout``) is a command whose first word is a verb
(``start``, ``status``...); each verb is its own parser, so ``genopt rollout start
--help`` shows start's options only. Options may also come before the verb
(``genopt rollout --json status triage``): the group accepts every option of its
verbs (hidden from its help) and the verb keeps what the group was given unless the
verb is given the option itself.

Example:
    >>> import argparse
    >>> root = argparse.ArgumentParser(prog="demo")
    >>> sub = root.add_subparsers(dest="command")
    >>> def show(args, ctx):
    ...     return 0
    >>> show_args = (Arg("name"), Arg("--json", action="store_true"))
    >>> _ = add_group(sub, "things", help="things", verbs=[Verb("show", show, "show", show_args)])
    >>> args = root.parse_args(["things", "--json", "show", "x"])
    >>> args.verb, args.name, args.json
    ('show', 'x', True)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

__all__ = ["Arg", "Verb", "add_group", "number", "json_arg", "Command"]

#: A command's function: the parsed arguments and the CLI's context in, the exit status out.
Command = Callable[[argparse.Namespace, "Context"], int]

RAW = argparse.RawDescriptionHelpFormatter


class Arg:
    """One argument of a verb, as given to ``ArgumentParser.add_argument``."""

    def __init__(self, *flags: str, **kwargs: Any) -> None:
        self.flags = flags
        self.kwargs = kwargs

    @property
    def is_option(self) -> bool:
        return self.flags[0].startswith("-")

    @property
    def dest(self) -> str:
        if "dest" in self.kwargs:
            return str(self.kwargs["dest"])
        if not self.is_option:
            return self.flags[0]
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Verb:
    """A verb of a group: its name, function, one-line help and arguments."""

    name: str
    func: Command
    help: str
    args: Sequence[Arg] = ()
    description: str | None = None
    epilog: str | None = None
    aliases: Sequence[str] = field(default_factory=tuple)


class _VerbMap(dict):  # type: ignore[type-arg]
    """The group's verb -> parser map. With a default verb (set once every verb is added),
    any word passes argparse's choice check: a word that is no verb becomes the default
    verb's first argument."""

    default: str | None = None

    def __contains__(self, key: object) -> bool:
        return self.default is not None or super().__contains__(key)


class _VerbsAction(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-parsers for verbs, with an optional default verb (``genopt proposals triage``
    is ``genopt proposals list triage``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _VerbMap()

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        default = self._name_parser_map.default
        if default is not None and not dict.__contains__(self._name_parser_map, values[0]):
            values = [default, *values]
        super().__call__(parser, namespace, values, option_string)


def add_group(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    *,
    help: str,  # noqa: A002 - argparse's word
    verbs: Sequence[Verb],
    description: str | None = None,
    epilog: str | None = None,
    default_verb: str | None = None,
) -> argparse.ArgumentParser:
    """Add the command group ``name`` with its verbs to ``sub``; returns the group's parser.

    Args:
        sub: The parent's sub-parsers.
        name: The group's name (``rollout``).
        help: Its line in the parent's help.
        verbs: Its verbs.
        description: Its help's description.
        epilog: Its help's epilog (kept as written).
        default_verb: The verb run when the first word is no verb, or there is none.
    """
    group = sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=RAW
    )
    seen: set[str] = set()
    for verb in verbs:  # every verb option, hidden, so that it may come before the verb
        for arg in verb.args:
            if arg.is_option and arg.dest not in seen:
                seen.add(arg.dest)
                group.add_argument(*arg.flags, **{**arg.kwargs, "help": argparse.SUPPRESS})
    action = group.add_subparsers(
        dest="verb",
        metavar="VERB",
        required=default_verb is None,
        action=_VerbsAction,
    )
    for verb in verbs:
        p = action.add_parser(
            verb.name,
            aliases=list(verb.aliases),
            help=verb.help,
            description=verb.description or verb.help[:1].upper() + verb.help[1:] + ".",
            epilog=verb.epilog,
            formatter_class=RAW,
        )
        for arg in verb.args:
            kwargs = dict(arg.kwargs)
            if arg.is_option:  # unset here: keep what the group was given (or its default)
                kwargs["default"] = argparse.SUPPRESS
            p.add_argument(*arg.flags, **kwargs)
        p.set_defaults(func=verb.func)
        if verb.name == default_verb:  # run with no verb word at all
            group.set_defaults(
                verb=verb.name,
                func=verb.func,
                **{a.dest: a.kwargs.get("default") for a in verb.args if not a.is_option},
            )
    action.choices.default = default_verb
    return group


def number(text: str) -> float:
    """An argument that must be a number (argparse ``type``).

    Example:
        >>> number("4"), number("nan") != number("nan")
        (4.0, True)
    """
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def json_arg(text: str, what: str) -> Any:
    """A JSON value given inline or as the path of a JSON file.

    Example:
        >>> json_arg('{"a": 1}', "--plan")
        {'a': 1}
    """
    from prefect_genopt.cli import CLIError

    path = Path(text).expanduser()
    inline = text.lstrip().startswith(("{", "["))
    raw = path.read_text() if not inline and path.is_file() else text
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CLIError(f"{what} is neither a JSON object nor a readable JSON file: {exc}") from None
