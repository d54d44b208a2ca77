"""The typer application every command module registers itself on."""

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

app = typer.Typer(
    name="cvlth",
    help="Lottery tickets in pre-trained vision models: find masks, transfer them, analyse them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C
INTERRUPTED_MESSAGE = "interrupted: finished runs are kept; run the same command again to resume"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def stops_cleanly_on_interrupt(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """A long command that Ctrl-C ends with one line and exit status 130, not a traceback.

    Whatever was running has already stopped (worker processes included) when the interrupt
    reaches here; further Ctrl-Cs are ignored so that the exit itself is not interrupted.
    """

    @functools.wraps(command)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            print(INTERRUPTED_MESSAGE, file=sys.stderr)
            raise typer.Exit(INTERRUPTED_EXIT_CODE) from None

    return wrapper
