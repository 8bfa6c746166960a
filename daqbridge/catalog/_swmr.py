"""Clearing the "open for writing" mark a killed SWMR writer leaves in an HDF5 file.

Why it is built this way:

* A camera writes its HDF5 file in SWMR mode, so a crash leaves every flushed frame readable.
  But libhdf5 marks the file in its superblock as open for (SWMR) writing and only the writer's
  close clears the mark; after a ``kill -9`` plain ``h5py.File(path, "r")`` refuses the file
  ("file is already open for write (may use <h5clear file> to clear file consistency flags)")
  and only ``swmr=True`` readers get in. Recovery of a killed run clears the mark, as
  ``h5clear -s FILE`` does, so the file opens in any HDF5 program.
* There is no public API for it: h5py has none, and ``h5clear`` sets a property libhdf5 itself
  calls private (``H5F_ACS_CLEAR_STATUS_FLAGS_NAME``, HDF5 ``tools/src/h5clear/h5clear.c``). The
  mark is, however, a documented field of the file format: the "File Consistency Flags" byte of
  superblock versions 2 and 3, protected by the superblock's Jenkins lookup3 checksum (HDF5 File
  Format Specification, "Superblock", versions 2/3). This module rewrites that byte and the
  checksum, which is what ``h5clear -s`` ends up writing, and raises the superblock's stale
  end-of-file address to the file's size, as ``h5clear --increment=0`` does (a plain reader
  refuses every chunk a SWMR writer appended after its last superblock write).
* It writes nothing unless the superblock is one it fully understands: the signature, version 2
  or 3, and a stored checksum that this module's lookup3 reproduces for the bytes as found. A
  file of another layout is left alone and reported.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for shift_a, shift_b, shift_c in ((4, 6, 8), (16, 19, 4)):
        a = ((a - c) & _MASK) ^ _rot(c, shift_a)
        c = (c + b) & _MASK
        b = ((b - a) & _MASK) ^ _rot(a, shift_b)
        a = (a + c) & _MASK
        c = ((c - b) & _MASK) ^ _rot(b, shift_c)
        b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _MASK
    a = ((a ^ c) - _rot(c, 11)) & _MASK
    b = ((b ^ a) - _rot(a, 25)) & _MASK
    c = ((c ^ b) - _rot(b, 16)) & _MASK
    a = ((a ^ c) - _rot(c, 4)) & _MASK
    b = ((b ^ a) - _rot(a, 14)) & _MASK
    return ((c ^ b) - _rot(b, 24)) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, as libhdf5's ``H5_checksum_lookup3``."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    i = 0
    while length - i > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        i += 12
    if length == i:
        return c
    tail = data[i:].ljust(12, b"\0")  # the missing bytes of the last block add nothing
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    return _final(a, b, c)


def _superblock_offset(f, size: int) -> int | None:
    """Where the superblock is: offset 0, or after a user block (512, 1024, 2048, ... bytes)."""
    offset = 0
    while offset + len(SIGNATURE) <= size:
        f.seek(offset)
        if f.read(len(SIGNATURE)) == SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def clear_write_mark(path: str | Path) -> bool:
    """Clear the superblock's consistency flags of ``path`` (``h5clear -s``).

    Returns True if a mark was cleared, False if there was none. Raises ``ValueError`` for a
    file this module does not understand (left untouched) and ``OSError`` if it cannot be
    read or written.
    """
    path = Path(path)
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        base = _superblock_offset(f, size)
        if base is None:
            raise ValueError(f"{path.name} has no HDF5 signature")
        f.seek(base + 8)
        head = f.read(4)
        if len(head) < 4:
            raise ValueError(f"{path.name}: superblock cut short")
        version, offset_size = head[0], head[1]
        if version not in (2, 3):
            # Versions 0 and 1 have no consistency flags a crash could leave set.
            return False
        if offset_size not in (2, 4, 8):
            raise ValueError(f"{path.name}: superblock offsets of {offset_size} bytes")
        body_length = 12 + 4 * offset_size  # signature .. root object header address
        f.seek(base)
        body = bytearray(f.read(body_length))
        stored = f.read(4)
        if len(body) < body_length or len(stored) < 4:
            raise ValueError(f"{path.name}: superblock cut short")
        if struct.unpack("<I", stored)[0] != lookup3(bytes(body)):
            raise ValueError(f"{path.name}: superblock checksum does not match; left untouched")
        if body[11] == 0:
            return False
        body[11] = 0
        # A SWMR writer extends the file without rewriting the superblock's end-of-file
        # address, which plain (non-SWMR) readers check every chunk address against ("addr
        # overflow"). Like ``h5clear --increment=0``, raise it to the end of the file.
        eoa_at = 12 + 2 * offset_size
        stored_eoa = int.from_bytes(body[eoa_at : eoa_at + offset_size], "little")
        eoa = max(stored_eoa, size - base)
        body[eoa_at : eoa_at + offset_size] = eoa.to_bytes(offset_size, "little")
        f.seek(base)
        f.write(bytes(body) + struct.pack("<I", lookup3(bytes(body))))
        f.flush()
        os.fsync(f.fileno())
    return True
