"""The repository's scripts keep the command-line contract: a bad flag is one line ``error: ...`` on stderr, naming
how the script is run (``see 'python benchmarks/quality.py --help'``), exit status 2, no traceback, no usage block,
nothing on stdout. Each runs in its own process, as a user starts it; each fails while parsing (a second or so,
a few seconds for those that import torch or onnx at module level)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every script of the repository that parses a command line: a new one is covered without being listed here.
SCRIPTS = sorted(
    str(path.relative_to(REPO)) for folder in ("benchmarks", "reference", "android_harness", "export")
    for path in (REPO / folder).glob("*.py")
    if '__name__ == "__main__"' in (text := path.read_text()) and ("ArgumentParser(" in text or "OneLineParser(" in text)
)
# How a user runs the scripts that are not run as "python PATH" (the prog their one line names).
RUN_AS = {"export/curvature.py": ["python", "-m", "zoodip_export.curvature"],
          "reference/demo.py": ["python", "-m", "reference.demo"]}
# (how a user runs it, the arguments before the bad flag): every script, plus a subcommand's own flags.
CASES = [(RUN_AS.get(script, ["python", script]), [], script) for script in SCRIPTS] + [
    (["python", "reference/sd_width.py"], ["start", "--out", "x"], "reference/sd_width.py"),  # a subcommand's parser
    (["python", "android_harness/arm_emulated.py"], ["status"], "android_harness/arm_emulated.py"),
]


def test_every_script_is_found() -> None:
    assert len(SCRIPTS) >= 20 and "benchmarks/quality.py" in SCRIPTS and "export/export_model.py" in SCRIPTS


@pytest.mark.parametrize("command, before, script", [pytest.param(c, b, s, id=" ".join([s] + b)) for c, b, s in CASES])
def test_a_bad_flag_is_one_line_and_exit_2(command, before, script):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "sdk"), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, script, *before, "--bogus-flag"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert f"see '{' '.join(command)}" in lines[0]  # the parser's prog is how the script is run
    assert run.stdout == ""
