"""What the CLI tests share: run the CLI in-process, and the flags of a short personalization run."""
from __future__ import annotations

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
