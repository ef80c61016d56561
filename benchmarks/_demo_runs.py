"""What the benchmarks that read a ``make demo`` output folder share (emphasis.py, long_prompts.py,
prompt_editing.py): their command line (``demo_benchmark``), the folder's check, their count flag's check, and their
results files."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from benchmarks._quality_report import run_context
from benchmarks._results_files import write_file
from benchmarks._results_guard import check_results_folder
from reference.repo import REPO, relative_args, repo_relative
from zoodip import validation
from zoodip.console import OneLineParser, print_error
from zoodip.errors import ZoodipError
from zoodip.paths import check_output_dir


def demo_benchmark(argv: list[str] | None, script: str, doc: str, needs: Sequence[str], count: tuple[str, int, str],
                   measure: Callable[[Path, int], dict], report: Callable[[dict, str, float], str]) -> int:
    """The command line ``python benchmarks/SCRIPT [--demo FOLDER] [COUNT N] [--out FOLDER]``: the demo folder checked
    for the files ``needs``, ``measure(demo, N)``, and its results written with ``report(result, command, seconds)``
    as results.md; a bad input is one line (exit 2). ``count``: the flag, its default and its help."""
    flag, default, help_text = count
    parser = OneLineParser(prog=f"python benchmarks/{script}", description=doc.split("\n\n")[0])
    parser.add_argument("--demo", default="demo_out", help=f"a make demo output folder ({', '.join(needs)})")
    parser.add_argument(flag, type=int, default=default, help=help_text)
    committed = REPO / "benchmarks" / "results" / Path(script).stem.replace("_", "-")
    parser.add_argument("--out", default=None, help=f"results folder (default: {repo_relative(committed)}, the "
                                                      "committed results)")
    try:
        args = parser.parse_args(argv)
        demo = check_demo_folder(Path(args.demo), needs)
        number = check_count(flag, getattr(args, flag.lstrip("-").replace("-", "_")))
        args.out = check_output_dir(committed if args.out is None else args.out, "--out")  # before the measurement
        check_results_folder(args.out, parser, argv, script)
        started = time.time()
        result = measure(demo, number)
        write_results(Path(args.out), script, argv, result, lambda command: report(result, command, time.time() - started))
        return 0
    except ZoodipError as exc:
        return print_error(exc)


def check_demo_folder(demo: Path, needs: Sequence[str]) -> Path:
    """``demo``, refused in one line unless it holds every file of ``needs`` (paths inside it)."""
    if not all((demo / name).is_file() for name in needs):
        raise ZoodipError(f"{demo} is not a make demo output folder ({', '.join(needs)}): run make demo first, "
                          "or pass --demo")
    return demo


# The count flag's ceiling (most, what it stands for in the refusal): a slip such as --captions 1000000 started days
# of generating.
MAX_COUNT = (10_000, "each is a generation of its own, read by the evaluator")


def check_count(flag: str, value: int) -> int:
    """The count flag's value, from 1 to MAX_COUNT (before the demo's model is loaded)."""
    return validation.positive_int(flag, value, 1, *MAX_COUNT)


def write_results(out: Path, script: str, argv: list[str] | None, result: dict,
                  markdown: Callable[[str], str]) -> None:
    """``out``/results.json (``result`` after the command, date and machine) and results.md, the latter
    ``markdown(command)`` with the command as typed (paths relative to the repository)."""
    command = " ".join([f"python benchmarks/{script}", *relative_args(sys.argv[1:] if argv is None else argv)])
    write_file(out / "results.json", json.dumps(run_context(command) | result, indent=1) + "\n")  # (each whole)
    write_file(out / "results.md", markdown(command))
    print(f"wrote {out / 'results.md'}")
