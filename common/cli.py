"""What the three command lines share: help style, ``--version``, exit codes, env names.

Each CLI (``ev-broker``, ``ev-station``, ``ev-vehicle``) is a Typer app made by
:func:`new_app` and started by :func:`run`, so all three have the same help
layout (plain text, ``-h``/``--help``, every option's environment variable and
default shown, the exit codes at the end of every ``--help``), a ``--version``
option and shell completion (``--install-completion``/``--show-completion``).

Environment variables: every option reads ``EV_<OPTION_NAME>``; where two
commands have options of the same name that mean different things, the one
that is not a long-running service's setting is prefixed with its command
(``EV_BILLING_DB``, ``EV_VEHICLE_ID``, ``EV_SWARM_COUNT``...). docs/cli.md has
the table; tests/unit/test_cli_contract.py checks that no name is shared by
two meanings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from importlib import metadata
from typing import Annotated, Any, Final

import typer
from typer.main import get_command

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

HELP_WIDTH: Final = 100
CONTEXT: Final[dict[str, Any]] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": HELP_WIDTH,
}


# The broker host a client connects to (ev-vehicle, ev-broker's bus consumers).
BrokerOpt = Annotated[
    str, typer.Option("--broker", envvar="EV_BROKER", help="Broker host.", show_default=True)
]
#: the broker's bus (PUB) and history (ROUTER) ports, for every program that reads them
EventsPortOpt = Annotated[
    int,
    typer.Option("--events-port", envvar="EV_EVENTS_PORT", min=1, max=65535, help="Bus PUB port."),
]
HistoryPortOpt = Annotated[
    int,
    typer.Option(
        "--history-port", envvar="EV_HISTORY_PORT", min=1, max=65535, help="History port."
    ),
]


class LogLevel(StrEnum):
    """Log levels every program accepts (``--log-level``)."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


class LogFormat(StrEnum):
    """Log line formats (``--log-format``)."""

    text = "text"
    json = "json"


def version() -> str:
    """The installed evcharge version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("evcharge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def exit_codes_text(codes: Sequence[tuple[int, str]]) -> str:
    """The epilog every ``--help`` of a program ends with."""
    return "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in codes) + "."


def new_app(help_text: str, *, no_args_is_help: bool = True) -> typer.Typer:
    """A Typer app in the common help style, with shell completion."""
    return typer.Typer(
        help=help_text,
        no_args_is_help=no_args_is_help,
        add_completion=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings=dict(CONTEXT),
    )


def version_callback(prog: str) -> Callable[[bool], None]:
    """The callback of an eager ``--version`` flag: print ``PROG VERSION`` and exit 0."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {version()}")
            raise typer.Exit(EXIT_OK)

    return show


def version_option(prog: str) -> Any:
    """``--version`` for an app's callback (no environment variable: it is a question)."""
    return typer.Option(
        "--version",
        callback=version_callback(prog),
        is_eager=True,
        help="Print the version and exit.",
    )


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every click command of a CLI tree with its path of names (the root has ``()``)."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


NOT_CONFIGURATION: Final = frozenset({"help", "version", "install_completion", "show_completion"})


def finish(app: typer.Typer, codes: Sequence[tuple[int, str]]) -> Any:
    """The app's click command with the common help: env vars shown, exit codes at the end."""
    root = get_command(app)
    epilog = exit_codes_text(codes)
    for _, command in walk(root):
        command.epilog = epilog
        for param in command.params:
            if getattr(param, "envvar", None):
                param.show_envvar = True
    return root


def run(
    app: typer.Typer,
    prog: str,
    codes: Sequence[tuple[int, str]],
    args: Sequence[str] | None = None,
) -> None:
    """Start a CLI (console-script entry point)."""
    command = finish(app, codes)
    command.main(args=list(sys.argv[1:] if args is None else args), prog_name=prog)
