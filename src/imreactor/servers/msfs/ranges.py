"""The ``Range: bytes=...`` request header (RFC 9110 §14), for one range.

:func:`byte_range` turns the header and the file's size into the span to send:
None means "send it all" (no header, one we ignore as the RFC allows: another
unit, several ranges, a malformed value), and :class:`Unsatisfiable` means 416.
"""

from __future__ import annotations

import re

_SPEC = re.compile(r"bytes=(\d{0,19})-(\d{0,19})\Z")


class Unsatisfiable(ValueError):
    """The range lies wholly past the end of the file."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for a single satisfiable range; see the module docstring."""
    if header is None:
        return None
    match = _SPEC.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first_s, last_s = match[1], match[2]
    if not first_s:
        if not last_s:
            return None  # "bytes=-" says nothing
        suffix = int(last_s)  # the last N bytes
        if suffix == 0:
            raise Unsatisfiable("an empty suffix")
        return max(0, size - suffix), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # invalid: ignored, the whole file is sent
    if first >= size:
        raise Unsatisfiable(f"starts at {first} of {size}")
    return first, min(int(last_s), size - 1) if last_s else size - 1
