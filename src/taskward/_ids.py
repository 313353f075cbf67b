"""Task id generation and the checks on caller-supplied ids."""

from __future__ import annotations

import os
import re
import socket

__all__ = [
    "MAX_ID_LENGTH",
    "check_id",
    "check_optional_id",
    "default_instance_id",
    "new_task_id",
]

MAX_ID_LENGTH = 256

# Printable (no control, format, separator or surrogate characters), no
# whitespace, and none of the characters that carry meaning in keys, glob
# patterns and hash tags ({ } * ? [ ] \ "): a caller's id can never name an
# internal key.
_REFUSED = re.compile(r'[\s{}*?\[\]\\"]')


# Random RFC 4122 version-4 ids, made 1024 at a time from one `os.urandom` call:
# same format and randomness source as `str(uuid.uuid4())` at a tenth of its cost,
# which matters when creating a task should cost little more than
# `asyncio.create_task`. The hex digits of a whole batch are laid into their
# columns with strided slice assignments and the batch is cut into ids by one
# `str.split`, so no Python code runs per id but a list pop.
_BATCH = 1024
_WIDTH = 37  # 36 characters and a separator
# Where the 32 hex digits of an id go in its 36-character form.
_COLUMNS = (*range(8), *range(9, 13), *range(14, 18), *range(19, 23), *range(24, 36))
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
_ready: list[str] = []


def _batch(n: int) -> list[str]:
    digits = os.urandom(16 * n).hex().encode()
    out = bytearray(b"-" * (_WIDTH * n))
    for j, column in enumerate(_COLUMNS):
        out[column::_WIDTH] = digits[j::32]
    out[14::_WIDTH] = b"4" * n  # version 4
    out[19::_WIDTH] = out[19::_WIDTH].translate(_VARIANT)  # variant 10xx
    out[36::_WIDTH] = b" " * n
    return out[:-1].decode().split(" ")


def new_task_id() -> str:
    """A random uuid4 in its canonical 36-character form."""
    if not _ready:
        _ready.extend(_batch(_BATCH))
    return _ready.pop()


# A forked child must not hand out the ids its parent had drawn but not used.
os.register_at_fork(after_in_child=_ready.clear)


def check_id(value: object, what: str) -> str:
    """Return `value` if it is a usable id, else raise `TypeError`/`ValueError`."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if not value.isprintable() or _REFUSED.search(value) is not None:
        raise ValueError(
            f"{what} {value!r} has a character that is not allowed "
            '(whitespace, control characters and { } * ? [ ] \\ " are refused)'
        )
    return value


def check_optional_id(value: object, what: str) -> str | None:
    """Like `check_id`, but `None` passes through (meaning: no such id)."""
    if value is None:
        return None
    return check_id(value, what)


def default_instance_id() -> str:
    """This host's name, the process id and a random suffix: unique per manager."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:64] or "host"
    return f"{host}-{os.getpid()}-{new_task_id()[:8]}"
