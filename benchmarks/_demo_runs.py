"""What the benchmarks that read a ``make demo`` output folder share (emphasis.py, long_prompts.py): the folder's
check, their count flag's check, and their results files."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from reference.repo import relative_args
from zoodip.errors import ZoodipError


def check_demo_folder(demo: Path, needs: Sequence[str]) -> Path:
    """``demo``, refused in one line unless it holds every file of ``needs`` (paths inside it)."""
    if not all((demo / name).is_file() for name in needs):
        raise ZoodipError(f"{demo} is not a make demo output folder ({', '.join(needs)}): run make demo first, "
                          "or pass --demo")
    return demo


def check_count(flag: str, value: int) -> int:
    if value < 1:
        raise ZoodipError(f"{flag} must be at least 1, got {value}")
    return value


def write_results(out: Path, script: str, argv: list[str] | None, result: dict,
                  markdown: Callable[[str], str]) -> None:
    """``out``/results.json and results.md, the latter ``markdown(command)`` with the command as typed (paths
    relative to the repository)."""
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([f"python benchmarks/{script}", *relative_args(sys.argv[1:] if argv is None else argv)])
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(command))
    print(f"wrote {out / 'results.md'}")
