"""Does anyone have a file open for writing? The open-writer check the sources and `check` use.

On local disks a Linux read lease is granted only while nobody has the file open
for writing. It needs ownership of the file or CAP_LEASE, and a local filesystem;
where it cannot answer, the answer is "unknown", never "nobody".
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

CAP_LEASE = 28  # linux/capability.h
LEASES_ENABLE = Path("/proc/sys/fs/leases-enable")
PROC_STATUS = Path("/proc/self/status")

NOBODY = "nobody"  # nobody has the file open for writing
WRITING = "writing"  # somebody has it open for writing
UNKNOWN = "unknown"  # cannot be known here (see reason)


@dataclass(frozen=True)
class Writers:
    """The answer of the open-writer check: NOBODY, WRITING or UNKNOWN (with the reason)."""

    state: str
    reason: str = ""
    file_problem: bool = False  # unknown because of this file (gone, unreadable), not of the source


def open_writers(path: Path) -> Writers:
    """Given a file on a local disk, say whether some process has it open for writing.

    Takes (and at once drops) a read lease, which the kernel grants only while no
    process has the file open for writing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        return Writers(UNKNOWN, f"cannot open it: {error.strerror or error}", file_problem=True)
    try:
        return lease_writers(fd)
    finally:
        os.close(fd)


def lease_writers(fd: int) -> Writers:
    """open_writers() for a file the caller holds open for reading (the fd stays open)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EBUSY):
            return Writers(WRITING)
        if error.errno in (errno.EACCES, errno.EPERM):
            return Writers(UNKNOWN, "the file belongs to another user and the gateway lacks CAP_LEASE")
        return Writers(UNKNOWN, f"the filesystem refuses leases ({error.strerror or error})")
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return Writers(NOBODY)


def has_cap_lease(status: Path = PROC_STATUS) -> bool:
    """True if this process holds CAP_LEASE in its effective set (root usually does)."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_LEASE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def leases_enabled(setting: Path = LEASES_ENABLE) -> bool:
    try:
        return setting.read_text().strip() != "0"
    except OSError:
        return True  # not readable (ProcSubset, containers): the kernel default is on


def writer_detection(folder: Path, network: bool, filesystem: str | None, settle_seconds: float) -> tuple[bool, str]:
    """For `check`: can open writers be detected in this folder? Return (yes, why, and what to do if not)."""
    longer = (
        f"rely on settle_seconds (now {settle_seconds:g}; set it above the longest pause of ALEPH's writer, "
        "e.g. 30) or ready_marker"
    )
    if network:
        return False, (f"not on {filesystem}: a writer on another host is invisible to this one; {longer}")
    if not leases_enabled():
        return False, f"file leases are off on this host (fs.leases-enable = 0); {longer}"
    if has_cap_lease():
        return True, "open writers are detected (read lease, CAP_LEASE held)"
    me = os.geteuid()
    try:
        owners = {
            entry.stat(follow_symlinks=False).st_uid
            for entry in os.scandir(folder)
            if entry.is_file(follow_symlinks=False)
        }
    except OSError:
        owners = set()
    others = sorted(owners - {me})
    if not others and owners:
        return True, "open writers are detected (read lease: the gateway owns the files there)"
    whose = (
        f"files there belong to uid {', '.join(map(str, others))}"
        if others
        else "ALEPH's files will belong to another user"
    )
    return False, (
        f"{whose} and the gateway lacks CAP_LEASE, so it cannot tell whether a writer still has a "
        f"file open; run it under the shipped unit (AmbientCapabilities=CAP_LEASE), or {longer}"
    )
