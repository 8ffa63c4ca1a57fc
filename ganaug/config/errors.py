"""User-facing errors and the wrapper that turns them into one line and exit code 2.

A `UserError` is a mistake in what the user handed in (params, paths, images):
it is reported as `error: <message>` on stderr with no traceback. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import re
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A problem with the user's input; the message names the file or key."""


class DataError(UserError):
    """A dataset, image or manifest that cannot be used."""


def one_line(message: object) -> str:
    """`message` on one line: each line break (and the indentation around it) becomes one space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()


def exit_on_user_error(main: F) -> F:
    """Decorate a stage's `main()`: print UserErrors as one line, exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
