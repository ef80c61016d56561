"""The ``zoodip`` command's entry point (``python -m zoodip``'s too). The CLI's imports (NumPy, onnxruntime, Pillow)
take a moment; a Ctrl-C or a SIGTERM then ends the command as one during its work does, with one line and exit status
130 (143 for the SIGTERM), not a traceback (nor, for the SIGTERM, an end without a word). Only zoodip.console, the
standard library's, is imported before."""
from __future__ import annotations

from .console import interrupt_on_termination, print_interrupted


def main() -> int:
    try:
        with interrupt_on_termination():  # (SIGTERM, SIGHUP as Ctrl-C: during the imports, then the whole command)
            from .cli import main as cli_main

            return cli_main()
    except KeyboardInterrupt as exc:  # (one during the imports: the CLI says its own for one during the work)
        return print_interrupted("", exc)
