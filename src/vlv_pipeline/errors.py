"""The errors a user fixes: ``UserError`` and its subclasses.

``UserError`` is the base of the project's errors that a user fixes (a parameter, a missing
or corrupt input, a conf setting, a remote captioner's refusal): ``kedro run`` (the project's
``cli.py``) prints their message alone, without a traceback, and exits 1. Kedro's own
parameter-validation errors are shown the same way, one line per bad key. Anything else is a
bug and keeps its traceback; ``kedro run --verbose`` or ``VLV_TRACEBACK=1`` shows the
traceback of user errors too.

Which type: ``ParameterError`` (a parameter's value, a catalog entry's option),
``InputError`` (an input unusable as it is), ``MissingInputError``,
``InputNotADirectoryError`` and ``MissingEntryError`` (a file, folder or item that is not
there), ``SetupError`` (a package or download missing), ``UnwritableError`` and ``SaveError``
(a full disk, a quota, permissions). Each keeps the builtin it replaced as a second base, so
``except ValueError`` still catches an ``InputError``. Checks of the code's own invariants
stay plain builtins: when one fails, it is a bug.

Secrets are masked in every message and log by ``masking.py``; Kedro's parameter-validation
text is made short by ``param_messages.py``.
"""

from __future__ import annotations

from kedro.io import DatasetError

__all__ = [
    "InputError",
    "InputNotADirectoryError",
    "MissingEntryError",
    "MissingInputError",
    "ModelDirectoryError",
    "ParameterError",
    "SaveError",
    "SecretParameterError",
    "SetupError",
    "UnknownParameterError",
    "UnwritableError",
    "UserError",
]


class UserError(Exception):
    """An error the user fixes: ``kedro run`` prints its message alone (no traceback).

    Subclasses keep their older base too (``class NoImagesKeptError(UserError, ValueError)``)
    so that code catching that base still does."""


class ParameterError(UserError, ValueError):
    """A parameter's value (conf's or ``--params``), or a catalog entry's option, that the
    user fixes: refused before any node runs, or by the node that reads it."""


class UnknownParameterError(ParameterError):
    """A ``--params`` key that no parameter block and no conf resolver reads."""


class SecretParameterError(ParameterError):
    """A secret given as a parameter: it belongs in ``conf/local/credentials.yml``."""


class InputError(UserError, ValueError):
    """An input is unusable as it is: a file the user handed over (a table without its
    columns, a tokenizer without an end token), or what a pipeline made that no longer fits
    (a source changed since ingest, a cache made by another model). The message says what to
    fix, or which pipeline to run again."""


class MissingInputError(UserError, FileNotFoundError):
    """A file, folder or model the run needs is not there: a path the user named, or what a
    pipeline makes (the message names it)."""


class InputNotADirectoryError(UserError, NotADirectoryError):
    """A path that must be a folder (a ``save_pretrained`` directory) is a file."""


class MissingEntryError(UserError, KeyError):
    """An item (an image, a row) is missing from an input that should hold it; the message
    says which pipeline makes it. Shown unquoted (a plain ``KeyError`` quotes its text)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class SetupError(UserError, RuntimeError):
    """Something the run needs is not installed or not downloaded: the message says what."""


class UnwritableError(UserError, OSError):
    """A write failed for a reason the user fixes: a full disk, a quota, permissions, a
    read-only file system (``files.unwritable`` words the message)."""


class SaveError(UserError, DatasetError):
    """A dataset's save failed for a reason the user fixes (``UnwritableError``'s, raised
    where Kedro expects a ``DatasetError``); nothing was saved there."""


class ModelDirectoryError(UserError, DatasetError):
    """A model directory the run reads is unusable as it is: not there, not a
    ``save_pretrained`` directory, or holding pickle weights (the message says what to do)."""
