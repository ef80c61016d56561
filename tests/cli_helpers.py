"""What the CLI tests share: run the CLI in-process, the flags of a short personalization run, and a signal sent to a
command while its imports are held."""
from __future__ import annotations

import signal
import subprocess
import sys

from zoodip.cli import main

TOKEN = "<striped-star>"


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of ``zoodip ARGS``."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def personalize_args(export, photos, out, *extra):
    return ["personalize", "--model", export, "--train_data_dir", photos, "--output_dir", out,
            "--placeholder_token", TOKEN, "--initializer_token", "star", "--max_train_steps", "3",
            "--eval-every", "3", "--tau", "4", "--threads", "1", "--no-progress", *extra]


def assert_one_line_error(code, err, needle):
    """The CLI's error contract: exit status 2, one line ``error: ...`` naming ``needle``, no traceback."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]


def held_import(held: str) -> str:
    """Python source that, run before a program, holds the import of the module ``held`` for a minute, saying
    'importing' on stdout: a test's signal then lands during the imports, however slow the machine."""
    return ("import sys, time\n"
            "class Hold:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name == {held!r}:\n"
            "            print('importing', flush=True)\n"
            "            time.sleep(60)\n"
            "sys.meta_path.insert(0, Hold())\n")


def signal_while_importing(program: str, args, sig: int, cwd) -> tuple[int, str, str]:
    """``python -c PROGRAM ARGS`` (a ``held_import`` first in it) sent ``sig`` once it says 'importing', Ctrl-C delivered
    as a terminal's; (exit status, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", program, *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline() == "importing\n"
    proc.send_signal(sig)
    printed, err = proc.communicate(timeout=60)
    return proc.returncode, printed, err
