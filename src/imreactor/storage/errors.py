"""The exceptions storage raises: one base type the server layer turns into an error response."""

from __future__ import annotations


class StorageError(Exception):
    """The database could not do what was asked: it is unreachable, broken or refused the change.

    Every backend raises this type (or a subclass) for every database failure, with the
    driver's exception chained as ``__cause__``; driver exception types never escape.
    When a write method raises it, the transaction was rolled back and nothing of it is
    stored.
    """


class ConflictError(StorageError):
    """A uniqueness rule refused the change (for example a user name that is taken)."""


class NotFoundError(StorageError):
    """The object the operation needs (a group, a user) does not exist."""
