"""The command-line parser's contract: one line for a bad flag, and either spelling of a flag's name."""
from __future__ import annotations

import argparse
import re
import sys

import pytest

from zoodip.console import OneLineParser
from zoodip.errors import ZoodipError


def parser() -> OneLineParser:
    p = OneLineParser(prog="tool")
    p.add_argument("--t-range", nargs=2, type=int, default=[500, 900])
    p.add_argument("--max_train_steps", type=int, default=1)
    p.add_argument("--center_crop", action="store_true")
    p.add_argument("--prompt", default="")
    return p


def test_a_flag_may_be_spelled_with_underscores_or_dashes():
    args = parser().parse_args(["--t_range", "1", "2", "--max-train-steps=7", "--center-crop"])
    assert args.t_range == [1, 2] and args.max_train_steps == 7 and args.center_crop
    assert parser().parse_args(["--t-range", "3", "4", "--max_train_steps", "5"]).t_range == [3, 4]


def test_a_flag_that_mixes_the_two_spellings_is_read_in_either() -> None:
    """argparse's --no- prefix mixes them (--no-center_crop): --no_center_crop was an unrecognized argument."""
    import argparse

    p = OneLineParser(prog="tool")
    p.add_argument("--center_crop", action=argparse.BooleanOptionalAction, default=True)
    for spelling in ("--no_center_crop", "--no-center-crop", "--no-center_crop"):
        assert p.parse_args([spelling]).center_crop is False


def test_values_and_everything_after_a_double_dash_are_left_alone():
    args, rest = parser().parse_known_args(["--prompt=a_b-c", "--", "--max-train-steps"])
    assert args.prompt == "a_b-c" and args.max_train_steps == 1
    assert rest == ["--", "--max-train-steps"]  # not respelled into the --max_train_steps flag


def test_an_unknown_flag_is_one_line_naming_the_tool():
    with pytest.raises(ZoodipError, match=r"unrecognized arguments: --nope.*see 'tool --help'"):
        parser().parse_args(["--nope"])


def test_a_value_that_starts_with_a_dash_says_how_to_write_it():
    """Found by a sweep: --prompt -ugly (or --guidance-scale -inf) said only that no value was given."""
    with pytest.raises(ZoodipError, match=r"argument --prompt: expected one argument \(a value that starts with '-' is "
                                          r"written --flag=VALUE\)"):
        parser().parse_args(["--prompt", "-ugly"])
    assert parser().parse_args(["--prompt=-ugly"]).prompt == "-ugly"


def draws(steps: int, monkeypatch, capsys, tty: bool, evals: tuple[int, ...] = ()) -> list[str]:
    """The bar's redraws (each a line, or on a terminal a \\r-separated piece, of stderr) over ``steps`` quick steps."""
    from zoodip.console import ProgressBar
    from zoodip.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    bar = ProgressBar(steps, enabled=True)
    for step in range(1, steps + 1):
        event = "eval" if step in evals else "step"
        bar(Progress(event, step, steps, 0.5, 0.4 if event == "eval" else None, None, 3 * step, 0.01 * step, 300.0, 1.0))
    bar.close()
    return [piece for piece in re.split(r"[\r\n]", capsys.readouterr().err) if f"/{steps}" in piece]


def test_the_bar_redraws_rarely_where_each_redraw_is_a_line_of_a_log(monkeypatch, capsys):
    logged = draws(2000, monkeypatch, capsys, tty=False, evals=(500, 1000))
    # The first draw, the evaluations and the final line: not one line per step.
    assert 3 <= len(logged) <= 6, len(logged)
    assert "2000/2000" in logged[-1] and any("eval=0.4000" in piece for piece in logged)


def test_the_expected_duration_is_said_once_after_more_than_the_first_step(monkeypatch, capsys):
    """The first step pays one-time costs: the estimate waits for 10 steps or 20 s of them, whichever is first."""
    from zoodip import console
    from zoodip.progress import Progress, duration

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    for seconds_per_step, said_at in ((0.05, 10), (8.0, 4)):  # a small model; an SD-size one (8 s a step)
        clock = [0.0]
        monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
        bar = console.ProgressBar(100, enabled=True)
        for step in range(1, 101):
            bar(Progress("step", step, 100, 0.5, None, None, 3 * step, clock[0], 60.0, 12.0 * (100 - step)))
            clock[0] += seconds_per_step
        bar.close()
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("expected: ")]
        assert lines == [f"expected: about {duration(12.0 * (100 - said_at))} for the remaining "
                         f"{100 - said_at} steps (timed on {said_at} steps)"], lines


def test_a_refused_setup_keeps_a_progress_log_another_run_has_written_to(tmp_path):
    """A run refused during its setup removed the --progress-jsonl file it had created, with the lines another run,
    given the same file, had appended since (its whole log then went to a deleted file)."""
    from types import SimpleNamespace

    from zoodip.progress import Progress
    from zoodip.progress_log import LazyJsonlLog

    config = SimpleNamespace(export_dir=tmp_path / "model", output_dir=tmp_path / "run")
    setup = Progress("setup", 0, 10, None, None, None, 0, 0.0, 0.0, None, phase="loading the model")
    for other_run_wrote in (False, True):
        path = tmp_path / f"progress-{other_run_wrote}.jsonl"
        log = LazyJsonlLog(str(path), config)
        log(setup)
        if other_run_wrote:
            with open(path, "a") as handle:
                handle.write('{"type": "progress", "event": "step"}\n')
        log.close()
        log.discard_setup_only()
        assert path.exists() == other_run_wrote


def test_help_tells_every_default_once():
    p = OneLineParser(prog="tool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01, help="step size")
    p.add_argument("--range", nargs=2, type=int, default=[500, 900])
    p.add_argument("--tau", type=int, default=None, help="history (default: the paper's 128)")
    p.add_argument("--off", action="store_true", help="switch")
    p.add_argument("--pattern", default="50%", help="a percent")
    text = " ".join(p.format_help().split())
    assert "--seed SEED default: 0" in text and "step size (default: 0.01)" in text
    assert "--range RANGE RANGE default: 500 900" in text
    assert "(default: the paper's 128)" in text and text.count("default") == 5
    assert "switch --pattern" in text and "a percent (default: 50%)" in text
    assert text == " ".join(p.format_help().split())  # (asking twice adds nothing)


def test_the_clis_help_tells_each_flags_default():
    from zoodip.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("personalize", "generate"):
        sub = commands[name]
        sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, argparse.SUPPRESS, "") and action.default is not False \
                    and action.nargs != 0:
                assert "default" in (action.help or ""), (name, action.option_strings)


def test_help_tells_no_default_for_a_switch_or_an_empty_value():
    # A store_false switch's default (True) is "not given": "--no-parity skip the checks (default: True)" read as if
    # the checks were skipped by default; an empty default ("--negative-prompt", "") printed a bare "default:".
    p = OneLineParser(prog="tool")
    p.add_argument("--no-parity", dest="parity", action="store_false", help="skip the checks")
    p.add_argument("--mode", action="store_const", const="fast", default="slow", help="go fast")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--tags", nargs="*", default=[], help="tags")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="mirror")
    text = " ".join(p.format_help().split())
    assert "skip the checks --mode" in text and "go fast --negative-prompt" in text
    assert "NEGATIVE_PROMPT --tags" in text and "tags --flip" in text
    assert "(default: True)" in text and text.count("default") == 1  # (the BooleanOptionalAction's own)


def test_a_path_default_under_the_current_folder_is_shown_relative(tmp_path, monkeypatch):
    """(Scripts anchor their defaults at the repository: the help showed this machine's absolute path.)"""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    p = OneLineParser(prog="tool")
    p.add_argument("--cache", type=Path, default=tmp_path / ".cache" / "x", help="where")
    p.add_argument("--elsewhere", type=Path, default=Path("/opt/data"), help="there")
    text = " ".join(p.format_help().split())
    assert "where (default: .cache/x)" in text and "there (default: /opt/data)" in text


def test_a_path_default_given_as_a_string_is_shown_relative_too(tmp_path, monkeypatch):
    """(memory.py's --cache default is str(REPO / ".cache" / "bench"): its help still showed the absolute path.)"""
    monkeypatch.chdir(tmp_path)
    p = OneLineParser(prog="tool")
    p.add_argument("--cache", default=str(tmp_path / ".cache" / "bench"), help="where")
    p.add_argument("--name", default="plain", help="a name")
    text = " ".join(p.format_help().split())
    assert "where (default: .cache/bench)" in text and "a name (default: plain)" in text


def test_a_count_whose_0_means_off_says_so_in_the_help():
    """personalize --help showed 'stop after this many evaluations without improvement (default: 0)' (0: never stops)
    and a bare 'default: 50' for --checkpointing_steps, as if 0 were a count of evaluations or had no meaning."""
    from zoodip.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    helps = {flag: action.help or "" for action in commands["personalize"]._actions for flag in action.option_strings}
    assert "0: never" in helps["--early-stop-patience"] and "0: only at the end" in helps["--checkpointing_steps"]


def test_a_resumed_finished_run_draws_its_bar_once_full_without_a_rate(monkeypatch, capsys):
    """--resume of a finished 6000-step run drew '5999/6000 [00:00]' and then '6000/6000 [00:00, fwd/s=0.00, ...]':
    a step that was not taken, and a rate of a session that made no forwards."""
    from zoodip.console import ProgressBar
    from zoodip.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = ProgressBar(6000, enabled=True)
    bar(Progress("done", 6000, 6000, None, 0.4, 6, 0, 0.1, 0.0, 0.0))
    bar.close()
    pieces = [piece for piece in re.split(r"[\r\n]", capsys.readouterr().err) if "/6000" in piece]
    assert pieces and all("6000/6000" in piece for piece in pieces), pieces
    assert not any("fwd/s" in piece for piece in pieces), pieces


def test_a_log_gets_each_redraw_as_a_line_of_its_own(monkeypatch, capsys):
    """Piped to a file, a 6000-step run's ~130 redraws were '\\r'-separated pieces of ONE line (13 KB; some 70 KB
    over the paper's 30,000 steps): a line-based reader (logcat, `tail -n 1`, an app reading lines) saw no progress
    until the run ended, hours later on a phone."""
    from zoodip.console import ProgressBar
    from zoodip.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = ProgressBar(2000, enabled=True)
    for step in range(1, 2001):
        event = "eval" if step in (500, 1000) else "step"
        bar(Progress(event, step, 2000, 0.5, 0.4 if event == "eval" else None, None, 3 * step, 0.01 * step, 300.0, 1.0))
        if step == 1000:
            so_far = capsys.readouterr().err
            assert so_far.endswith("\n") and "1000/2000" in so_far.splitlines()[-1], so_far[-200:]
    bar.close()
    lines = capsys.readouterr().err.split("\n")
    assert not any("\r" in line for line in lines), lines
    assert "2000/2000" in lines[-2] and lines[-1] == ""


@pytest.mark.parametrize("every, suffix", [(25, ", plus 4 previews, not timed yet (the ETA adds them once one is)"),
                                           (5, "")])
def test_the_expected_duration_says_the_previews_it_leaves_out(monkeypatch, capsys, every, suffix):
    """Said after 10 steps, before any preview was timed, it left them out unsaid (SD's default previews: some 40% of
    a run); a preview timed by then is in the trainer's ETA, and the line needs no more."""
    from zoodip.console import ProgressBar
    from zoodip.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = ProgressBar(100, enabled=True, preview_every=every)
    for step in range(1, 101):
        bar(Progress("step", step, 100, 0.5, None, None, 3 * step, 0.01 * step, 300.0, 12.0 * (100 - step)))
        if step % every == 0:
            bar(Progress("validation", step, 100, 0.5, None, None, 3 * step, 0.01 * step, 300.0, 1.0, path="v.png"))
    bar.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("expected: ")]
    assert lines == ["expected: about 18 min 00 s for the remaining 90 steps (timed on 10 steps)" + suffix], lines


@pytest.mark.parametrize("argv, nearest", [(["personalise"], "personalize"), (["--sampler", "dpm++2m"], "dpmpp_2m"),
                                           (["--sampler", "Euler_Ancestral"], "euler_a"), (["frobnicate"], None)])
def test_an_invalid_choice_names_the_one_most_likely_meant(argv, nearest):
    """argparse listed the choices only: a British spelling of a command or diffusers' spelling of a sampler named
    nothing of what was meant; a value near none gets no guess."""
    from zoodip.console import OneLineParser

    parser = OneLineParser(prog="prog")
    if argv[0].startswith("--"):
        parser.add_argument("--sampler", choices=("dpmpp_2m", "ddim", "euler", "euler_a", "lcm"))
    else:
        parser.add_subparsers(dest="command", required=True).add_parser("personalize")
    with pytest.raises(ZoodipError) as caught:
        parser.parse_args(argv)
    guess = re.findall(r"\(did you mean '([^']*)'\?\)", str(caught.value))
    assert guess == ([nearest] if nearest else []), str(caught.value)


def test_a_bad_byte_beside_a_character_an_ascii_terminal_cannot_show_is_still_shown_as_the_byte() -> None:
    """On an ASCII stream 'é' and b'\\xff' (held as '\\udcff') fail together, and the pair was escaped as Python's
    '\\xe9\\udcff', the surrogate the handler exists to hide."""
    from zoodip.console import OUTPUT_ERRORS

    assert "caf\u00e9\udcff.png".encode("ascii", OUTPUT_ERRORS) == b"caf\\xe9\\xff.png"
    assert "\udcff\u00e9".encode("ascii", OUTPUT_ERRORS) == b"\\xff\\xe9"
    assert "\udcff".encode("utf-8", OUTPUT_ERRORS) == b"\\xff"


def test_the_status_of_an_interrupted_command_is_said_in_one_place() -> None:
    """128 + the signal was written in three places (interrupted_status, GracefulStop.exit_code, the benchmarks'
    child runs' statuses) and 141 in a fourth (the CLI's closed pipe): each is console.status_for_signal now."""
    import signal

    from zoodip import console

    assert [console.status_for_signal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)] == \
        [130, 143, 129, 141]
    assert console.INTERRUPTED_STATUSES == {130, 143, 129}
    assert [console.interrupting_signal(code) for code in (130, -2, 143, -15, 129, -1, 0, 1, 2, 141, -9)] == \
        [signal.SIGINT] * 2 + [signal.SIGTERM] * 2 + [signal.SIGHUP] * 2 + [None] * 5
    assert console.interrupted_status(console.interrupt_for(signal.SIGTERM)) == 143
    assert type(console.interrupt_for(signal.SIGINT)) is KeyboardInterrupt


@pytest.mark.parametrize("first, second", [("SIGINT", "SIGINT"), ("SIGTERM", "SIGTERM"), ("SIGINT", "SIGTERM")])
def test_a_second_signal_during_a_graceful_stop_ends_with_its_own_status(first, second) -> None:
    """The first signal asks the run to stop after the step; the second interrupts at once. The second was a plain
    KeyboardInterrupt whatever it was, and a command stopped by two SIGTERMs ended 130, not 143."""
    import os
    import signal
    import time

    from zoodip.console import GracefulStop, interrupted_status

    first, second = getattr(signal, first), getattr(signal, second)
    with GracefulStop() as stop:
        os.kill(os.getpid(), first)
        time.sleep(0.05)  # (a handler runs in the main thread, between two bytecodes: here)
        assert stop.event.is_set() and stop.exit_code == 128 + first
        with pytest.raises(KeyboardInterrupt) as caught:
            os.kill(os.getpid(), second)
            time.sleep(5)
    assert interrupted_status(caught.value) == 128 + second


def test_the_handlers_said_from_a_script_s_start_are_put_back_as_its_main_starts() -> None:
    """interrupts_said_from_here: a script's imports end in one line on a signal; its main's own handling
    (script_main's) is what it was, the handlers put back first; imported (not run), a script changes nothing."""
    import signal

    from zoodip.console import interrupts_said_from_here, script_main

    before = {kind: signal.getsignal(kind) for kind in (signal.SIGINT, signal.SIGTERM)}
    interrupts_said_from_here("some_script")
    assert {kind: signal.getsignal(kind) for kind in before} == before
    seen = {}

    @script_main("nothing was written")
    def main() -> int:
        seen["SIGINT"] = signal.getsignal(signal.SIGINT)
        return 0

    try:
        interrupts_said_from_here("__main__")
        assert all(signal.getsignal(kind) != handler for kind, handler in before.items())
        assert main() == 0
    finally:
        for kind, handler in before.items():
            signal.signal(kind, handler)
    assert seen["SIGINT"] == before[signal.SIGINT] and signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]


def test_a_required_path_that_starts_with_a_dash_is_said_as_one_read_as_a_flag(tmp_path, monkeypatch) -> None:
    """``zoodip info -x.safetensors`` said only 'the following arguments are required: PATH', the file given right
    there: argparse read it as an unknown flag. The line now says how to write such a path; an unknown flag that
    reads as no file name (``--verbose``) gets no such hint."""
    from zoodip.console import OneLineParser

    parser = OneLineParser(prog="zoodip info")
    parser.add_argument("path", metavar="PATH")
    with pytest.raises(ZoodipError) as caught:
        parser.parse_args(["-x.safetensors"])
    assert "(-x.safetensors was read as a flag: a path that starts with '-' is written ./-x.safetensors, or after --)" \
        in str(caught.value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-plain").write_text("")  # (no dot, but a file here)
    with pytest.raises(ZoodipError, match=r"written \./-plain"):
        parser.parse_args(["-plain"])
    with pytest.raises(ZoodipError) as caught:
        parser.parse_args(["--verbose"])
    assert str(caught.value) == "the following arguments are required: PATH: see 'zoodip info --help'"
    assert parser.parse_args(["--", "-x.safetensors"]).path == "-x.safetensors"


def test_an_interrupt_that_a_del_swallowed_is_delivered_again() -> None:
    """CPython ignores an exception raised in a ``__del__`` (it prints 'Exception ignored in ...'): a Ctrl-C whose
    handler ran while a third-party object was collected (regex's Group.__del__, during make demo's export) was lost,
    and the demo ran on to its end. While a command runs (interrupt_on_termination), such an interrupt is sent again."""
    import time

    from zoodip.console import interrupt_on_termination

    class Collected:
        def __del__(self) -> None:
            raise KeyboardInterrupt  # (as the signal's handler raises it there)

    hook = sys.unraisablehook
    with pytest.raises(KeyboardInterrupt):
        with interrupt_on_termination():
            Collected()
            time.sleep(5)  # (the interrupt, sent again, lands here)
    assert sys.unraisablehook is hook
