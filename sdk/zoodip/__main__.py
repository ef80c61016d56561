"""``python -m zoodip ...``: the ``zoodip`` command where its script is not on PATH (a venv not activated, an app's
embedded Python, Termux)."""
import sys

from .entry import main

if __name__ == "__main__":
    sys.exit(main())
