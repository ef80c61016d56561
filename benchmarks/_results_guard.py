"""The guard every benchmark with a committed results folder puts before its work: a run whose settings differ
from those recorded in a results folder under benchmarks/results/ must not silently replace that folder's run
(a bare ``--quick`` run would otherwise overwrite the committed full run)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from reference.repo import REPO, relative_args, repo_relative
from zoodip.errors import ZoodipError

RESULTS = REPO / "benchmarks" / "results"
# Where a run reads or writes, not what it measures: the same settings in another folder are the same run.
NOT_SETTINGS = ("out", "work", "cache", "demo")


def recorded_command(folder: Path, record: str = "results") -> str | None:
    """The command a results folder's run recorded: ``record``.json's ``command`` (or ``meta.command``), else the
    first backquoted ``python benchmarks/...`` line of ``record``.md; None where the folder holds no such run."""
    try:
        result = json.loads((folder / f"{record}.json").read_text())
        command = result.get("command") or (result.get("meta") or {}).get("command")
        if isinstance(command, str) and command.strip():
            return command
    except (OSError, ValueError, AttributeError):
        pass
    try:
        lines = (folder / f"{record}.md").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        line = line.strip()
        if line.startswith("`python benchmarks/") and line.endswith("`"):
            return line.strip("`")
    return "" if (folder / f"{record}.json").is_file() else None  # a run without a command: never the same settings


def _settings(parser: argparse.ArgumentParser, words: Iterable[str],
              normalize: Callable[[argparse.Namespace], dict[str, Any]]) -> dict[str, Any] | None:
    """The settings ``words`` (a command's arguments) parse to, without NOT_SETTINGS; None where they do not parse."""
    try:
        settings = normalize(parser.parse_args(list(words)))
    except (ZoodipError, SystemExit):  # a flag since renamed: not provably the same settings
        return None
    return {key: value for key, value in settings.items() if key not in NOT_SETTINGS}


def check_results_folder(out: Path, parser: argparse.ArgumentParser, argv: list[str] | None, script: str,
                         normalize: Callable[[argparse.Namespace], dict[str, Any]] = vars, record: str = "results") -> None:
    """Refuse, in one line, a run into a folder under benchmarks/results/ that holds a run recorded with other
    settings (its command, parsed by ``parser``; ``argv``: this run's arguments, as typed; None: the
    process's). The recorded command
    itself, re-run, may replace its results. ``normalize``: a parsed namespace as settings (defaults filled in);
    ``record``: the name of the files (.json, .md) this run writes."""
    folder = Path(out).resolve()  # (benchmarks/../benchmarks/results/x, or a link to it, is that folder)
    if not folder.is_relative_to(RESULTS.resolve()):
        return
    command = recorded_command(folder, record)
    if command is None:
        return
    words = shlex.split(command)
    script_at = next((i for i, word in enumerate(words) if word.endswith(script)), None)
    # Only an interpreter before the script: a recorded 'VAR=1 PYTHONPATH=PATCH python ...' ran what flags do not say.
    plain = script_at is not None and all(Path(word).name.startswith("python") and "=" not in word
                                              for word in words[:script_at])
    recorded = _settings(parser, words[script_at + 1:], normalize) if plain else None
    if recorded is None:  # (re-running its command would not pass either: say so, not "re-run that command")
        run = f"the results of `{command}`, settings" if command else "results that record no command, settings"
        raise ZoodipError(f"--out {repo_relative(folder)} holds {run} no run can be proven to repeat: pass --out "
                          "OTHER_FOLDER")
    if recorded != _settings(parser, relative_args(sys.argv[1:] if argv is None else argv), normalize):
        raise ZoodipError(f"--out {repo_relative(folder)} holds the committed results of `{command}`, a run with "
                          "other settings: pass --out OTHER_FOLDER (or re-run that command to replace them)")


__all__ = ["check_results_folder", "recorded_command"]
