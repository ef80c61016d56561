"""A benchmark's temporary work folder that does not outlive its run (memory.py's and quality.py's default --work).

A Ctrl-C or an exception removes a ``TemporaryDirectory`` on the way out; a SIGTERM would not (its default ends the
process without that exit), so it is made an exit; a SIGKILL, a crash or a test's timeout leave the folder, so it is
named after its process, and the next run of any benchmark removes those whose process is gone.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from zoodip.console import status_for_signal
from zoodip.paths import left_by_ended_process


def scratch_folder(prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary folder ``{prefix}{pid}-...`` in the temp directory, removed at exit, on Ctrl-C and on SIGTERM;
    first, the ``prefix`` folders of runs whose process is gone are removed (not other names: a --smoke output)."""
    for stale in left_by_ended_process(Path(tempfile.gettempdir()), re.compile(rf"^{re.escape(prefix)}(\d+)-")):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # (script_main's own, which says a line, is kept)
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(status_for_signal(signum)))
    except ValueError:  # not the main thread: no handler can be set
        pass
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")
