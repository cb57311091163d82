"""A filesystem that fills up on demand, through retrain's write seam (``retrain.atomic.writes_through``).

``FillingDisk(match, skip, free)`` is called like ``os.write``. Writes to files whose path
does not contain ``match`` go to the disk as usual. Of the writes to matching files, the
first ``skip`` go through untouched; after them only ``free`` more bytes fit: a write that
crosses that limit writes what fits (a short write, as the kernel does) and the next one
fails with ``ENOSPC`` (or ``EDQUOT``: a spent quota).

Run as a script, it runs retrain's command line with every write going through one:
``python disk_fakes.py MATCH SKIP FREE -- ARGS...``.
"""

from __future__ import annotations

import errno
import os
import sys


class FillingDisk:
    def __init__(self, match: str, skip: int, free: int, number: int = errno.ENOSPC) -> None:
        self.match = match
        self.skip = skip
        self.free = free
        self.number = number
        self.failures = 0

    def __call__(self, fd: int, data: memoryview) -> int:
        if self.match not in os.readlink(f"/proc/self/fd/{fd}"):
            return os.write(fd, data)
        if self.skip > 0:
            self.skip -= 1
            return os.write(fd, data)
        if self.free <= 0:
            self.failures += 1
            raise OSError(self.number, os.strerror(self.number))
        written = os.write(fd, data[:self.free])
        self.free -= written
        return written


def main(argv: list[str]) -> int:
    match, skip, free, separator, *args = argv
    assert separator == "--", "usage: disk_fakes.py MATCH SKIP FREE -- ARGS..."
    from retrain.atomic import writes_through
    from retrain.cli import main as retrain_main

    with writes_through(FillingDisk(match, int(skip), int(free))):
        return retrain_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
