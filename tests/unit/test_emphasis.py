"""zoodip.emphasis: AUTOMATIC1111's prompt emphasis read into per-token weights, and the weights applied."""
from __future__ import annotations

import numpy as np
import pytest

from zoodip.emphasis import (CHUNK_TOKENS, COMMA_BACKTRACK, MAX_CHUNKS, PROMPT_WEIGHTINGS, check_prompt_weighting,
                             chunked_token_ids, emphasis_free_text, emphasize, looks_emphasized, parse_chunks,
                             parse_emphasis, unsupported_problems, weighted_token_ids)
from zoodip.errors import ZoodipError
from zoodip.tokenizer import CLIPTokenizer
from zoodip_export.clip_vocab import write_clip_tokenizer_files

R, S = 1.1, 1 / 1.1  # A1111's round and square bracket factors


@pytest.mark.parametrize("prompt, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("a ((very)) [quiet] dog", [("a ", 1.0), ("very", R * R), (" ", 1.0), ("quiet", S), (" dog", 1.0)]),
    ("a (cat:1.5) and a (dog: 0.25 )", [("a ", 1.0), ("cat", 1.5), (" and a ", 1.0), ("dog", 0.25)]),
    ("((cat:1.5) on a mat)", [("cat", 1.5 * R), (" on a mat", R)]),
    ("(x:-1)", [("x", -1.0)]),
    # Unclosed brackets weight the rest of the prompt; an unmatched closer is plain text.
    ("(unbalanced", [("unbalanced", R)]),
    ("[unbalanced", [("unbalanced", S)]),
    ("a (b [c", [("a ", 1.0), ("b ", R), ("c", R * S)]),
    ("a) b] c", [("a) b] c", 1.0)]),
    # Escapes are the characters themselves; a backslash before anything else is dropped.
    (r"\(literal\] \\ end", [(r"(literal] \ end", 1.0)]),
    (r"a\b", [("ab", 1.0)]),
    # Neighbours of one weight are one piece (tokenized together, as in A1111).
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    # A ':' that does not close "(x:w)" is text, and so is ":w)" with no "(" open.
    ("ratio 3:2", [("ratio 3:2", 1.0)]),
    ("x:1.2) y", [("x:1.2) y", 1.0)]),
    ("(a:b)", [("a:b", R)]),
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
])
def test_parse_emphasis(prompt, expected):
    got = parse_emphasis(prompt)
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert np.allclose([w for _, w in got], [w for _, w in expected], rtol=1e-12, atol=0)


def test_weights_multiply_through_nesting_as_a1111_rounds_them():
    """The house example of A1111's parser documentation: the open '(' at the start covers everything."""
    got = dict(parse_emphasis("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert got["house"] == 1.3 * 1.1 * 1.1 and got["on"] == 1.0 and got["hill"] == 0.5 * 1.1
    assert got["sky"] == 1.1 * 1.1 * 1.1 * 1.1 and got[", sun, "] == 1.1


def test_an_unreadable_weight_is_one_clear_error():
    with pytest.raises(ZoodipError, match=r"cannot read the emphasis weight '1\.2\.3'"):
        parse_emphasis("(cat:1.2.3)")
    with pytest.raises(ZoodipError, match="unknown prompt_weighting 'compel'"):
        check_prompt_weighting("compel")
    for choice in PROMPT_WEIGHTINGS:
        check_prompt_weighting(choice)


def test_which_prompts_are_said_to_look_weighted():
    assert looks_emphasized("a (cat:1.3) on a mat") and looks_emphasized("(cat: .5 )")
    # Brackets weigh by themselves in A1111 (((masterpiece)) x1.21, [blurry] /1.1): the defaults read them as text.
    assert looks_emphasized("a ((cat))") and looks_emphasized("[blurry], x")
    # Spaces between the brackets change nothing in A1111 (the outer pair still weighs the inner one): said as well.
    assert looks_emphasized("a ( (cat) ) b") and looks_emphasized("( ( cat ) )")
    assert parse_emphasis("( (x) )") == [(" ", 1.1), ("x", 1.1 * 1.1), (" ", 1.1)]  # A1111's parse_prompt_attention
    assert not looks_emphasized("a [cat:dog:0.5] or [a|b]") and not looks_emphasized(r"a \(cat\) () []")
    for prose in ("a dog (golden retriever)", "born (1865)", "array[0]", "((1))"):  # as often plain text: not said
        assert not looks_emphasized(prose), prose
    assert unsupported_problems("a cat BREAK a hat", chunked=False) and not unsupported_problems("a cat BREAK a hat")
    assert not unsupported_problems("a breakfast, break", chunked=False)
    # A1111's prompt editing and AND are read before emphasis (zoodip.prompt_schedule): nothing to say here.
    for plain in ("a [cat] and (dog:1.2)", "[ratio 3:2 ok]", "a | b", "[a:b]", "a [cat:dog:0.5]", "a cat AND a dog"):
        assert not unsupported_problems(plain), plain


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    return CLIPTokenizer.from_folder(write_clip_tokenizer_files(tmp_path_factory.mktemp("tok") / "sd1"))


def test_token_weights_line_up_with_the_tokens(tokenizer):
    ids, weights = weighted_token_ids(tokenizer, "a photo of a (shiny:1.5) [red] car")
    assert np.array_equal(ids, tokenizer(["a photo of a shiny red car"]))  # the brackets are not tokens
    n = len(tokenizer.encode("a photo of a"))
    expected = np.ones(ids.shape, np.float32)
    expected[0, 1 + n] = 1.5  # after the start token
    expected[0, 2 + n] = np.float32(S)
    assert np.array_equal(weights, expected) and weights.dtype == np.float32
    # The text the prompt checks read tokenizes as the weighted prompt does, a bracket ending a word.
    assert np.array_equal(tokenizer([emphasis_free_text("a photo of a (shiny:1.5) [red] car")]), ids)
    assert np.array_equal(tokenizer([emphasis_free_text("(big)car")]), tokenizer(["big car"]))


def test_token_weights_are_cut_with_the_tokens(tokenizer):
    ids, weights = weighted_token_ids(tokenizer, "dog " * 74 + "(cat cat cat:2)")
    assert np.array_equal(ids, tokenizer(["dog " * 74 + "cat cat cat"]))  # 77 tokens: the last two cats cut
    assert weights[0, 75] == 2.0 and weights[0, 74] == 1.0 and weights[0, 76] == 1.0  # 76: the end token
    assert weighted_token_ids(tokenizer, "")[1].tolist() == np.ones((1, 77)).tolist()


def test_emphasize_weights_tokens_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    states = (rng.standard_normal((2, 77, 8)) + 0.3).astype(np.float32)
    weights = np.ones((2, 77), np.float32)
    assert np.array_equal(emphasize(states, weights), states)  # no emphasis: the states themselves
    weights[0, 3], weights[1, 5] = 1.5, 0.5
    out = emphasize(states, weights)
    assert out.dtype == np.float32
    assert np.allclose(out.mean(axis=(1, 2)), states.mean(axis=(1, 2)), rtol=1e-5)
    ratio = out / states  # one scale per row, times the token's weight
    for row, token in ((0, 3), (1, 5)):
        scale = np.delete(ratio[row], token, axis=0)
        assert np.allclose(scale, scale[0, 0], rtol=1e-5)
        assert np.allclose(ratio[row, token], scale[0, 0] * weights[row, token], rtol=1e-5)
    ones, cancelling = np.ones((1, 77, 2), np.float32), np.ones((1, 77), np.float32)
    cancelling[0, 0] = -76.0  # the weighted states' mean is 0: no rescale to make (A1111 divides by zero)
    assert np.array_equal(emphasize(ones, cancelling), ones * cancelling[..., None])
    with pytest.raises(ZoodipError, match="finite"):
        emphasize(states, np.full((2, 77), np.nan, np.float32))


def test_weights_beyond_the_largest_read_are_one_clear_error():
    for prompt in ("(" * 1000 + "star" + ")" * 1000, "(star:1" + "0" * 40 + ")", "(star:1" + "0" * 400 + ")",
                   "(star:1" + "0" * 38 + ")", "(star:-101)", "(" * 49 + "star" + ")" * 49):  # 1.1^49 = 107
        with pytest.raises(ZoodipError, match="the emphasis weight of 'star' comes to .*: fewer nested brackets"):
            parse_emphasis(prompt)
    assert parse_emphasis("(star:100)") == [("star", 100.0)] and parse_emphasis("(star:-100)") == [("star", -100.0)]


@pytest.mark.parametrize("prompt, expected", [
    ("a cat BREAK a hat", [[("a cat", 1.0)], [("a hat", 1.0)]]),
    ("a cat\nBREAK\ta hat", [[("a cat", 1.0)], [("a hat", 1.0)]]),  # the spaces around it go with it
    ("BREAK a hat", [[("", 1.0)], [("a hat", 1.0)]]),  # an empty first chunk, as A1111 encodes it
    ("a cat BREAK", [[("a cat", 1.0)], [("", 1.0)]]),
    ("(a cat BREAK a) hat", [[("a cat", R)], [("a", R), (" hat", 1.0)]]),  # brackets span the break
    ("a BREAK BREAK b", [[("a", 1.0)], [("", 1.0)], [("b", 1.0)]]),
    # Only the capitalized word on its own: breakfast, Break, xBREAK and BREAKs are text.
    ("breakfast Break xBREAK BREAKs", [[("breakfast Break xBREAK BREAKs", 1.0)]]),
    (r"\(BREAK\)", [[("(", 1.0)], [(")", 1.0)]]),
])
def test_break_splits_the_pieces(prompt, expected):
    assert parse_chunks(prompt) == expected


def test_parse_emphasis_reads_break_as_text():
    assert parse_emphasis("a cat BREAK a hat") == [("a cat BREAK a hat", 1.0)]


def _tokens(row: np.ndarray, tokenizer) -> list[int]:
    """The chunk's own tokens: between the start token and the first end token."""
    assert row[0] == tokenizer.bos_id
    return [int(i) for i in row[1 : list(row).index(tokenizer.eos_id, 1)]]


def test_a_prompt_of_one_chunk_is_laid_out_as_before(tokenizer):
    for prompt in ("", "a photo of a (shiny:1.5) [red] car", "dog " * 75):
        ids, weights = chunked_token_ids(tokenizer, prompt)
        old_ids, old_weights = weighted_token_ids(tokenizer, prompt)
        assert np.array_equal(ids, old_ids) and np.array_equal(weights, old_weights)


def test_long_prompts_are_cut_in_chunks_of_75(tokenizer):
    ids, weights = chunked_token_ids(tokenizer, "dog " * 100 + "(cat:2)")
    assert ids.shape == weights.shape == (2, 77)
    first, second = _tokens(ids[0], tokenizer), _tokens(ids[1], tokenizer)
    dog, cat = tokenizer.encode("dog")[0], tokenizer.encode("cat")[0]
    assert first == [dog] * CHUNK_TOKENS and second == [dog] * 25 + [cat]
    assert ids[1, 28:].tolist() == [tokenizer.pad_id] * 49
    assert weights[1, 26] == 2.0 and (np.delete(weights, [77 + 26]) == 1.0).all()


@pytest.mark.parametrize("comma_at, first_length", [
    (CHUNK_TOKENS - COMMA_BACKTRACK, CHUNK_TOKENS - COMMA_BACKTRACK + 1),  # the last 20 words move to the next chunk
    (CHUNK_TOKENS - COMMA_BACKTRACK - 1, CHUNK_TOKENS),  # 21 words after the comma: no move
    (CHUNK_TOKENS - 1, CHUNK_TOKENS),  # the comma is the 75th token: nothing after it to move
])
def test_a_chunk_ends_at_a_comma_near_its_end(tokenizer, comma_at, first_length):
    prompt = "dog " * comma_at + ", " + "cat " * 40
    ids, weights = chunked_token_ids(tokenizer, prompt)
    first, second = _tokens(ids[0], tokenizer), _tokens(ids[1], tokenizer)
    assert len(first) == first_length and first + second == tokenizer.encode(prompt)


def test_break_makes_chunks_even_short_ones(tokenizer):
    ids, _ = chunked_token_ids(tokenizer, "a cat BREAK a hat")
    assert [_tokens(row, tokenizer) for row in ids] == [tokenizer.encode("a cat"), tokenizer.encode("a hat")]
    ids, _ = chunked_token_ids(tokenizer, "BREAK a hat")
    assert [_tokens(row, tokenizer) for row in ids] == [[], tokenizer.encode("a hat")]
    assert len(chunked_token_ids(tokenizer, "a hat BREAK")[0]) == 1


def test_an_added_tokens_vectors_stay_in_one_chunk(tmp_path):
    tok = CLIPTokenizer.from_folder(write_clip_tokenizer_files(tmp_path / "sd1"))
    added = tok.add_placeholder("<thing>", 3)
    ids, _ = chunked_token_ids(tok, "dog " * 73 + "<thing>")
    first, second = _tokens(ids[0], tok), _tokens(ids[1], tok)
    assert len(first) == 73 and second == list(added)  # 73 + 3 > 75: all three move
    ids, _ = chunked_token_ids(tok, "dog " * 72 + "<thing>")
    assert len(ids) == 1 and _tokens(ids[0], tok)[-3:] == list(added)
    # Two tokens written together are two units: the first fits, the second moves alone (as A1111 does).
    a, b = tok.add_placeholder("<a>")[0], tok.add_placeholder("<b>")[0]
    assert b == a + 1
    ids, _ = chunked_token_ids(tok, "dog " * 74 + "<a><b>")
    assert _tokens(ids[0], tok)[-1] == a and _tokens(ids[1], tok) == [b]


def test_too_many_chunks_are_refused(tokenizer):
    assert len(chunked_token_ids(tokenizer, "dog " * (MAX_CHUNKS * CHUNK_TOKENS))[0]) == MAX_CHUNKS
    with pytest.raises(ZoodipError, match=f"takes {MAX_CHUNKS + 1} chunks of 75 tokens"):
        chunked_token_ids(tokenizer, "dog " * (MAX_CHUNKS * CHUNK_TOKENS + 1))
