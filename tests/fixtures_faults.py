"""Faults for tests: a file system that fills up, and killing a launcher with everything it started."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess


class TinyDisk(io.FileIO):
    """A file on a file system with ``free`` bytes left: a write past them raises ENOSPC (RELIABILITY C4)."""

    free = 4096

    def write(self, data):
        if self.tell() + len(data) > self.free:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def tiny_disk_open(path, mode="rb"):
    """An ``open`` replacement whose files are :class:`TinyDisk` (binary modes)."""
    return TinyDisk(path, mode.replace("b", ""))


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a process started with ``start_new_session=True`` and every rank and worker it started (they would
    outlive a bare ``kill()``), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
