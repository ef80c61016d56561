"""The ``zoodip`` command's entry point. The CLI's imports (NumPy, onnxruntime, Pillow) take a moment; a Ctrl-C
then ends the command as one during its work does, with one line and exit status 130, not a traceback."""
from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return cli_main()
