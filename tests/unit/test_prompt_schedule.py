"""zoodip.prompt_schedule: A1111's prompt editing and alternation, read as its published examples read them."""
from __future__ import annotations

import time

import pytest

from zoodip.errors import ZoodipError
from zoodip.prompt_schedule import (MAX_DEPTH, MAX_PHASES, MAX_SCHEDULED_CHARS, Phases, check_phase_count,
                                    parse_schedule, prompt_schedule, schedule_problems)


def schedule(prompt: str, steps: int = 10) -> list[tuple[int, str]]:
    phases = prompt_schedule(prompt, steps)
    return list(zip(phases.ends, phases.values))


# The examples of A1111's prompt_parser (its doctests, web UI 1.6+), with what it reads for each over 10 steps.
A1111_EXAMPLES = {
    "test": [(10, "test")],
    "a [b:3]": [(3, "a "), (10, "a b")],
    "a [b: 3]": [(3, "a "), (10, "a b")],
    "a [[[b]]:2]": [(2, "a "), (10, "a [[b]]")],
    "[(a:2):3]": [(3, ""), (10, "(a:2)")],
    "a [b : c : 1] d": [(1, "a b  d"), (10, "a  c  d")],
    "a[b:[c:d:2]:1]e": [(1, "abe"), (2, "ace"), (10, "ade")],
    "a [unbalanced": [(10, "a [unbalanced")],
    "a [b:.5] c": [(5, "a  c"), (10, "a b c")],
    "((a][:b:c [d:3]": [(3, "((a][:b:c "), (10, "((a][:b:c d")],
    "[a|(b:1.1)]": [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)],
    "[fe|]male": [(step, "female" if step % 2 else "male") for step in range(1, 11)],
    "[fe|||]male": [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)],
}


@pytest.mark.parametrize("prompt", list(A1111_EXAMPLES))
def test_a1111s_examples(prompt):
    assert schedule(prompt) == A1111_EXAMPLES[prompt]


def test_a1111s_long_example_over_100_steps():
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
              "[ in background:0.25] [shoddy:masterful:0.5]")
    assert schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_each_sampling_step_reads_the_phase_a1111_gives_it():
    # A1111's reconstruct_cond_batch: step i (0-based) takes the first phase with i <= its end.
    edited = prompt_schedule("a [red:blue:5] star", 10)
    assert [edited.at(i) for i in range(10)] == ["a red star"] * 6 + ["a blue star"] * 4
    alternating = prompt_schedule("[cat|dog] photo", 5)
    assert [alternating.at(i) for i in range(5)] == ["cat photo", "cat photo", "dog photo", "cat photo", "dog photo"]
    assert prompt_schedule("a red star", 25) == Phases((25,), ("a red star",))


@pytest.mark.parametrize("when, steps, first_phase_steps", [
    ("3", 10, 4),        # a step number: before for the steps 0..3
    ("0.5", 10, 6),      # a fraction: int(0.5 * 10) = 5
    ("1.0", 10, 10),     # the whole run
    ("1.5", 10, 10),     # past the end: the last step
    ("15", 10, 10),
    ("1e1", 20, 11),     # no ".": a step number, 10
    ("0", 10, 0),        # never before
    ("-2", 10, 0),
    ("1e400", 10, 10),   # overflows to infinity: the last step
    ("-1e400", 10, 0),
])
def test_when_is_a_step_or_a_fraction(when, steps, first_phase_steps):
    phases = prompt_schedule(f"[a:b:{when}]", steps)
    assert [phases.at(i) for i in range(steps)] == ["a"] * first_phase_steps + ["b"] * (steps - first_phase_steps)


def test_what_is_not_an_edit_is_kept_as_written():
    # Emphasis, escaped brackets and colons stay for the emphasis parser; a prompt that does not parse is whole.
    for prompt in ("a (red:1.2) [star]", r"a \[b:3\] c", "[a:b]", "[a:b:c:3]", "[a|b:3]", "a | b [c:3]", "(a|b)",
                   "[a:3) b]", "a [b:3] \\", "ratio 3:2", ""):
        assert schedule(prompt) == [(10, prompt)], prompt
        assert parse_schedule(prompt) is None
    assert schedule("(a [b|c]:1.2)", 2) == [(1, "(a b:1.2)"), (2, "(a c:1.2)")]  # inside emphasis too


def test_hostile_prompts_are_read_whole_in_linear_time():
    deep = "[" * (MAX_DEPTH + 1) + "a|b" + "]" * (MAX_DEPTH + 1)
    assert schedule(deep) == [(10, deep)] and "nested over" in schedule_problems(deep)[0]
    assert schedule("[" * MAX_DEPTH + "a|b" + "]" * MAX_DEPTH, 2)[1] == (2, "[" * (MAX_DEPTH - 1) + "b" + "]" * (MAX_DEPTH - 1))
    long = "a [b:3] " + "x" * MAX_SCHEDULED_CHARS
    assert schedule(long) == [(10, long)] and "characters" in schedule_problems(long)[0]
    assert not schedule_problems("a [b:3]") and not schedule_problems("a | b")
    started = time.perf_counter()
    for unclosed in ("([" * 9_000, "[a:" * 6_000, "(" * 18_000 + "[a|b]", "[a:" + "1" * 19_990 + "x]"):
        prompt_schedule(unclosed, 1000)
    assert time.perf_counter() - started < 5  # a parser that backtracks per bracket takes hours here


def test_distinct_phases_are_bounded_and_encoded_once():
    crowded = prompt_schedule("[a|b|c|d|e|f|g] [h|i|j|k|l|m|n|o|p|q|r]", 100)  # 7 x 11 = 77 distinct prompts
    with pytest.raises(ZoodipError, match=rf"77 different prompts over 100 steps; at most {MAX_PHASES}"):
        check_phase_count(crowded, "prompt")
    check_phase_count(prompt_schedule("[a|b] [c|d|e]", 1000), "prompt")  # 6
    calls = []
    encoded = prompt_schedule("[cat|dog]", 9).map(lambda text: calls.append(text) or text.upper())
    assert calls == ["cat", "dog"] and [encoded.at(i) for i in range(4)] == ["CAT", "CAT", "DOG", "CAT"]


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "10"])
def test_steps_are_checked(steps):
    with pytest.raises(ZoodipError, match="steps must be a positive integer"):
        prompt_schedule("a [b:3]", steps)


def test_and_splits_a_prompt_into_weighted_parts():
    from zoodip.prompt_schedule import MAX_PARTS, composable_parts

    assert composable_parts("a cat AND a dog :0.8") == [("a cat", 1.0), (" a dog", 0.8)]
    assert composable_parts("a cat") == [("a cat", 1.0)] and composable_parts("") == [("", 1.0)]
    assert composable_parts("photo, 16:9") == [("photo, 16", 9.0)]  # as A1111: a trailing ":w" weights the prompt
    assert composable_parts("ANDROID BAND AND x:-1.5 AND (y:1.2)") == [("ANDROID BAND", 1.0), (" x", -1.5),
                                                                        (" (y:1.2)", 1.0)]
    assert composable_parts("a:.5 AND b:5.") == [("a", 0.5), (" b", 5.0)]
    # The corners of A1111's regex: its leading spaces are greedy, its "." stops at a line break.
    assert composable_parts("  :2 AND    AND \n a :-1 AND a\nb :2 AND c : 1.5.") == [
        ("  ", 2.0), ("    ", 1.0), (" \n a", -1.0), (" a\nb :2 ", 1.0), (" c : 1.5.", 1.0)]
    with pytest.raises(ZoodipError, match=f"9 parts joined by AND; at most {MAX_PARTS}"):
        composable_parts(" AND ".join("abcdefghi"))
    with pytest.raises(ZoodipError, match="has the weight 1000 .* at most 100 either way"):
        composable_parts("a cat:1000")
    started = time.perf_counter()
    for hostile in ("a" + " " * 1_000_000 + "b", "x:" + "1" * 1_000_000 + "x", "a\n" * 300_000 + ":2"):
        composable_parts(hostile)
    assert time.perf_counter() - started < 5  # A1111's regex takes hours on the first
