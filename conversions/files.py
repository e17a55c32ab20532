"""Files that are never seen half-written: every artifact of the suite (reports, records, baselines, recipes,
prediction outputs, cached models) is written to a temporary file in the same directory and renamed into place.

- :func:`atomic_write` (bytes or text): readers see the old file or the whole new one, never a part;
- :func:`atomic_path`: a context manager yielding a temporary path in the destination's directory for writers that
  want a file name (``np.savez``, ``model.save_to``, ``mlmodel.save``), renamed into place on success and removed
  on any failure;
- :func:`sha256_file`: the digest that verifies what is cached or shipped (read in 1 MB blocks).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; the file gets ``mode`` (mkstemp's 0600
    would make reports private to one user of a shared runner). Returns the path."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix unless given); when the block ends normally, rename it
    onto ``path`` (a file, or a directory such as an ``.mlpackage``, replacing an existing one); on any error remove
    it. ``path``'s directory must exist."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    tmp = path.parent / f".tmp-{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} (for {path})")
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB blocks (packages hold weight files of hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
