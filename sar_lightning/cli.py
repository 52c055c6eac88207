"""The command line's error policy: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import errno
import sys

from sar_lightning.config import ConfigError
from sar_lightning.files import FileError
from sar_lightning.runs import RunBusy, RunStopped

_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC}


def run_cli(command: str, work) -> int:
    """Run a command's ``work()``; bad input (a config, a file, a busy or unwritable run folder) ends in
    one line on stderr naming the key or file and what to do, and exit code 2 (nothing half-written:
    every file is written atomically)."""
    try:
        work()
    except (ConfigError, FileError, FileNotFoundError, RunBusy) as err:
        print(f"{command} error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"{command}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        print(f"{command} error: cannot write {err.filename or 'the run folder'}: {err.strerror}; choose a "
              "writable root=... (the folder that holds the run folders) or fix its permissions", file=sys.stderr)
        return 2
    return 0
