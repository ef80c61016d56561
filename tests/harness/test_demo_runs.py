"""benchmarks/_demo_runs.py: the command line the benchmarks that read a make demo output folder share, whose
refusal of a folder that is not a demo run each of them keeps."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["emphasis.py", "long_prompts.py", "prompt_editing.py"])
def test_a_folder_that_is_not_a_demo_run_is_one_line(tmp_path, script):
    run = subprocess.run([sys.executable, f"benchmarks/{script}", "--demo", str(tmp_path), "--out", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "is not a make demo output folder" in run.stderr
    assert not (tmp_path / "o").exists()
