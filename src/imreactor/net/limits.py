"""The process's open-file limit: every connection holds one descriptor.

One home for raising ``RLIMIT_NOFILE`` so servers, the echo server, benchmarks
and the load generator agree on what "as many as allowed" means, including a
hard limit of ``RLIM_INFINITY`` (which ``setrlimit`` refuses as a soft value on
some kernels, so a large finite value is asked for instead).
"""

from __future__ import annotations

import resource

#: Soft limit asked for when the hard limit is unlimited.
UNLIMITED_TARGET = 1 << 20


def open_files_limit() -> int | None:
    """The current soft limit on open files; ``None`` when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> int | None:
    """Raise the soft open-file limit as far as the hard limit allows.

    Returns the soft limit in force afterwards (``None`` when unlimited). Never
    raises: if the kernel refuses, the old limit stays and is returned, and a
    large run may then fail to open connections (which it reports itself).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep what we have
    return open_files_limit()
