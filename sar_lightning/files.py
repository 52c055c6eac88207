"""Files the suite writes and reads: crash-safe writes (a temporary file beside the target, renamed over
it, with the user's umask) and checkpoint loads that never run code (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


CACHE_ENV = "SAR_CACHE"


def default_cache_root(cache_root: str | os.PathLike | None = None) -> Path:
    """``cache_root``, else ``$SAR_CACHE``, else ``~/.cache/sar-lightning``: derived files kept between runs
    (trained feature classifiers, data splits)."""
    if cache_root is not None:
        return Path(cache_root)
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "sar-lightning"))


UMASK = _umask()  # files get 0o666 & ~umask (0644 by default), as open() would give them


class FileError(ValueError):
    """A file that cannot be used; the message names it and says what to do."""


def safe_load(path: str | Path, what: str, hint: str = "", map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code. A file the
    safe loader refuses, or a truncated or garbage one, raises ``FileError`` naming it and ``what`` it
    should be (``hint``: what to do)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if "weights only load failed" in str(err).lower() or "weights_only" in str(err).lower():
            reason = "it holds objects other than tensors and plain containers, which are never unpickled here"
        raise FileError(f"{path} is not a loadable {what}: {reason}{'; ' + hint if hint else ''}") from None


def atomic_write(path: str | Path, write) -> None:
    """Replace ``path`` with what ``write(tmp_path)`` writes, in one rename: readers see the old or the
    new file, never half; a crash leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600: collaborators could not read results
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (see ``atomic_write``)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
