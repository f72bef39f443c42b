"""Small file helpers shared by the model bundle, the index and storage."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def new_memmap(path: str | os.PathLike, dtype, shape: tuple):
    """``np.lib.format.open_memmap(path, mode="w+")`` with the file's blocks allocated first.  The file
    it makes is sparse, and writing through the map into a sparse file on a full disk kills the process
    with SIGBUS (no message, the temporary folder left behind); allocated up front, a full disk is an
    OSError (ENOSPC) here instead, which the build reports."""
    import numpy as np

    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            del arr
            raise
        # EOPNOTSUPP and the like: a file system that cannot allocate ahead; write as before
    finally:
        os.close(fd)
    return arr


def describe_files(folder: Path, names: list[str]) -> dict[str, dict]:
    """``{name: {"sha256", "bytes"}}`` for the manifest's file list."""
    return {
        name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in sorted(names)
    }


def write_text_atomic(path: str | os.PathLike, text: str, mode: int = 0o666) -> None:
    """Write ``text`` beside ``path`` and rename it into place, so readers see old or new, never
    half; a failed write removes its temporary file (ours: O_EXCL made it) and leaves ``path`` be."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON atomically (write_text_atomic)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    return data
