"""The command-line programs: `henbackup` (daemon.py) and `henbackupctl` (ctl.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

TYPE_CHECKING = False  # as typing.TYPE_CHECKING is, without importing typing (3 ms)
if TYPE_CHECKING:
    from typing import Any, NoReturn, TextIO

# henbackup speaks English and has no message catalogue, so argparse's own words stay
# English too: translating them would import locale and search the locale directories
# again for each of them (8 stat calls a string), 5 ms of each command's start.
argparse._ = str


class Parser(argparse.ArgumentParser):
    """argparse's parser, with help laid out to the terminal's width read without shutil:
    argparse imports shutil for it, and shutil the compression modules (2.5 ms of each
    command's start). Its subcommands' parsers are Parsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but an option of the program's written after the command (which
        argparse calls unrecognized) is said to go before it."""
        parsed, extras = self.parse_known_args(args, namespace)
        misplaced = [arg for arg in extras if arg.split("=", 1)[0] in self._option_string_actions]
        if misplaced:
            option = misplaced[0].split("=", 1)[0]
            self.error(f"{option} goes before the command: {self.prog} {option} ... COMMAND")
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)  # as argparse's default does


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size says it: $COLUMNS, else stdout's
    terminal, else 80."""
    with contextlib.suppress(KeyError, ValueError):
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):  # no stdout, or not a terminal
        columns = 0
    return columns or 80


def exit_now(code: int) -> NoReturn:
    """Exit with `code` once stdout and stderr are flushed, skipping the interpreter's
    teardown: freeing every module's objects one by one costs 10 to 20 ms at the end of each
    command (a quarter of henbackupctl's own time), and no file of ours waits for it: each
    is closed by its `with`. A flush that fails exits 120, as Python's own exit does."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left, or the stream was closed
            code = code or 120
    os._exit(code)


def reader_left(stream: TextIO) -> None:
    """The reader of `stream` (stdout) left, as in `henbackupctl status | head -1`: like any
    Unix tool, no traceback. The stream goes to /dev/null, so that what is still printed,
    and the flush at exit, go nowhere instead of failing again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
