"""A real, small filesystem for disk-full and read-only tests: a tmpfs mounted on a temp dir.

A real one because what these tests are about (ENOSPC in the middle of an HDF5 write, EROFS on
creating a file, what libhdf5 does afterwards) happens in the kernel and in libhdf5; nothing that
imitates them would show how those two behave. Mounting needs root (CAP_SYS_ADMIN); where it
cannot be done the test is skipped and the skip says exactly why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1024 * 1024


@contextlib.contextmanager
def small_disk(where: Path, size: int, *, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes (rounded up to pages) on ``where``; unmount it after."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip(
            f"mounting a {size}-byte tmpfs on {where} needs root (mount(2)); this test runs "
            f"as uid {os.geteuid()}"
        )
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount/umount command on PATH to make a small tmpfs")
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", options, "daqbridge-test", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if made.returncode != 0:
        pytest.skip(
            f"mount -t tmpfs -o {options} on {where} is not permitted here "
            f"(exit {made.returncode}: {made.stderr.strip()})"
        )
    try:
        yield where
    finally:
        done = subprocess.run([umount, str(where)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            # A file still open after a failed assertion: detach now, freed once it is closed.
            subprocess.run([umount, "-l", str(where)], capture_output=True, timeout=30)
