"""safetensors reading/writing (interop with the reference package) and embedding files."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from zoodip.embeddings import (a1111_file_name, check_hidden_size, load_embedding_file, read_embedding_metadata,
                               save_a1111_embedding, save_learned_embeds)
from zoodip.errors import ZoodipError
from zoodip.safetensors_io import load_file, load_metadata, save_file

DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8]


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {f"t_{np.dtype(d).name}": (rng.standard_normal((3, 5)) * 50).astype(d) for d in DTYPES}
    tensors["scalar"] = np.array(1.5, np.float32)
    tensors["empty"] = np.zeros((0, 4), np.float32)
    tensors["big_endian"] = np.arange(6, dtype=">f4").reshape(2, 3)
    tensors["strided"] = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    return tensors


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert a[key].dtype.kind == b[key].dtype.kind and a[key].dtype.itemsize == b[key].dtype.itemsize, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_round_trip_and_metadata(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt", "note": "héllo"})
    loaded = load_file(path)
    assert_same(tensors, loaded)
    assert all(v.flags.writeable and v.flags.owndata for v in loaded.values())
    assert load_metadata(path) == {"format": "pt", "note": "héllo"}
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0  # data buffer aligned, as the reference writer does
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp files left


def test_interop_with_reference_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    tensors = sample_tensors()
    ours = save_file(tensors, tmp_path / "ours.safetensors", metadata={"k": "v"})
    assert_same(tensors, st.load_file(str(ours)))

    theirs = tmp_path / "theirs.safetensors"
    st.save_file({k: v.astype(v.dtype.newbyteorder("=")) for k, v in tensors.items()},
                 str(theirs), metadata={"a": "b"})
    assert_same(tensors, load_file(theirs))
    assert load_metadata(theirs) == {"a": "b"}


def test_bf16_reads_as_float32(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    values = torch.tensor([[1.0, -2.5, 3.140625], [0.0, 1e-3, -65280.0]], dtype=torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    st_torch.save_file({"w": values}, str(path))
    loaded = load_file(path)["w"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values.float().numpy())


def test_corrupt_files_raise_zoodip_error(tmp_path: Path) -> None:
    good = save_file({"a": np.arange(10, dtype=np.float32)}, tmp_path / "good.safetensors").read_bytes()
    header_len = struct.unpack("<Q", good[:8])[0]
    cases = {
        "empty": b"",
        "short": good[:5],
        "truncated_header": good[: 8 + header_len // 2],
        "truncated_data": good[:-4],
        "huge_header_len": struct.pack("<Q", 2**62) + good[8:],
        "not_json": struct.pack("<Q", 4) + b"\xff\xfe{}",
        "json_list": struct.pack("<Q", 8) + b"[1, 2] ",
    }
    bad_header = json.loads(good[8 : 8 + header_len])
    bad_header["a"]["dtype"] = "F8_E4M3X"
    blob = json.dumps(bad_header).encode()
    cases["bad_dtype"] = struct.pack("<Q", len(blob)) + blob + good[8 + header_len :]
    bad_header["a"].update(dtype="F32", shape=[11])
    blob = json.dumps(bad_header).encode()
    cases["shape_mismatch"] = struct.pack("<Q", len(blob)) + blob + good[8 + header_len :]
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ZoodipError, match="safetensors"):
            load_file(path)
    with pytest.raises(ZoodipError, match="does not exist"):
        load_file(tmp_path / "missing.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = save_file({"a": np.ones(3, np.float32)}, tmp_path / "e.safetensors")
    before = path.read_bytes()
    with pytest.raises(ZoodipError):
        save_file({"a": np.ones(3, np.float32), "b": np.array(["text"])}, path)
    with pytest.raises(ZoodipError):
        save_file({"a": np.ones(3, np.float32)}, path, metadata={"n": 1})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


# -- embedding files --------------------------------------------------------------------------------
def test_save_and_load_learned_embeds(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    path = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<cat-toy>", vectors)
    raw = load_file(path)
    assert list(raw) == ["<cat-toy>"] and raw["<cat-toy>"].dtype == np.float32 and raw["<cat-toy>"].shape == (2, 16)
    token, loaded = load_embedding_file(path)
    assert token == "<cat-toy>"
    np.testing.assert_array_equal(loaded, vectors)
    assert load_embedding_file(path, token="<other>")[0] == "<other>"

    one = save_learned_embeds(tmp_path / "one.safetensors", "<x>", vectors[0].astype(np.float64))
    assert load_file(one)["<x>"].shape == (1, 16)
    for bad in (np.zeros((0, 16)), np.zeros((1, 2, 3)), np.full(4, np.nan)):
        with pytest.raises(ZoodipError):
            save_learned_embeds(tmp_path / "bad.safetensors", "<x>", bad)
    with pytest.raises(ZoodipError):
        save_learned_embeds(tmp_path / "bad.safetensors", " <x>", vectors)
    with pytest.raises(ZoodipError, match="safetensors"):
        save_learned_embeds(tmp_path / "learned_embeds.bin", "<x>", vectors)


def test_load_other_layouts(tmp_path: Path) -> None:
    vec = np.linspace(-1, 1, 16, dtype=np.float32)
    # diffusers with a 1-D tensor, stored as float16
    token, loaded = load_embedding_file(save_file({"<dog>": vec.astype(np.float16)}, tmp_path / "d.safetensors"))
    assert token == "<dog>" and loaded.shape == (1, 16) and loaded.dtype == np.float32
    # A1111/webui: emb_params, the token is the file name
    a1111 = save_file({"emb_params": np.stack([vec, -vec])}, tmp_path / "my-style.safetensors")
    token, loaded = load_embedding_file(a1111)
    assert token == "<my-style>" and loaded.shape == (2, 16)
    assert load_embedding_file(a1111, token="my-style")[0] == "my-style"
    bracketed = save_file({"emb_params": vec[None]}, tmp_path / "<thing>.safetensors")
    assert load_embedding_file(bracketed)[0] == "<thing>"
    flat = save_file({"string_to_param.*": vec[None]}, tmp_path / "flat.safetensors")
    assert load_embedding_file(flat)[0] == "<flat>"

    for name, tensors, message in [
        ("many", {"a": vec, "b": vec, "c": vec}, "3 tensors"),
        ("sdxl", {"clip_l": vec, "clip_g": vec}, "SDXL"),
        ("ints", {"<i>": np.arange(16)}, "not floats"),
        ("nan", {"<n>": np.full(16, np.nan, np.float32)}, "NaN"),
    ]:
        path = save_file(tensors, tmp_path / f"{name}.safetensors")
        with pytest.raises(ZoodipError, match=message):
            load_embedding_file(path)


def test_a1111_layout_round_trips(tmp_path: Path) -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    path = save_a1111_embedding(tmp_path / a1111_file_name("<my-dog>"), "<my-dog>", vectors, {"steps": "5"})
    assert path.name == "my-dog.safetensors"  # A1111's trigger word: my-dog
    assert list(load_file(path)) == ["emb_params"]
    token, loaded = load_embedding_file(path)
    assert token == "<my-dog>" and np.array_equal(loaded, vectors)
    assert read_embedding_metadata(path) | {"steps": "5", "num_vectors": "3"} == read_embedding_metadata(path)
    for bad in ("<a/b>", "<>", "<.hidden>", "<learned_embeds>", "<learned_embeds-steps-5>"):
        with pytest.raises(ZoodipError, match=r"^a1111=True: "):
            a1111_file_name(bad)


def test_pickles_are_refused(tmp_path: Path) -> None:
    for name in ("learned_embeds.bin", "embedding.pt"):
        path = tmp_path / name
        path.write_bytes(b"\x80\x02}q\x00.")
        with pytest.raises(ZoodipError, match="pickle.*safetensors"):
            load_embedding_file(path)
    renamed = tmp_path / "renamed.safetensors"  # a torch.save zip under the wrong suffix
    renamed.write_bytes(b"PK\x03\x04" + os.urandom(64))
    with pytest.raises(ZoodipError, match="pickle"):
        load_embedding_file(renamed)
    import zipfile

    with zipfile.ZipFile(renamed, "w") as archive:  # a whole torch.save zip: its pickle inside
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ZoodipError, match="pickle"):
        load_embedding_file(renamed)
    checkpoint = tmp_path / "checkpoint.npz"  # a zip too, but of arrays: a run's checkpoint, not a pickle
    np.savez(checkpoint, v=np.zeros(4, np.float32))
    with pytest.raises(ZoodipError, match=r"is a NumPy archive \(.npz, as a run's checkpoint.npz\), not an embedding"):
        load_embedding_file(checkpoint)


def test_check_hidden_size() -> None:
    check_hidden_size(np.zeros((2, 768)), 768, "x.safetensors")
    with pytest.raises(ZoodipError, match="1024-wide.*768 wide"):
        check_hidden_size(np.zeros((1, 1024)), 768, "x.safetensors")


def test_diffusers_load_textual_inversion_accepts_our_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    loaders = pytest.importorskip("diffusers.loaders")
    try:
        from zoodip_export.clip_vocab import write_clip_tokenizer_files

        tokenizer_dir = write_clip_tokenizer_files(tmp_path / "tokenizer")
    except (ImportError, ZoodipError) as exc:
        pytest.skip(f"CLIP vocabulary unavailable: {exc}")

    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=49408, max_position_embeddings=77)

    class Pipeline(loaders.TextualInversionLoaderMixin):  # the two components the loader needs
        hf_device_map = None

        def __init__(self) -> None:
            self.tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tokenizer_dir))
            self.text_encoder = transformers.CLIPTextModel(config).eval()
            self.components = {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}

    vectors = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    path = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<cat-toy>", vectors)
    pipe = Pipeline()
    pipe.load_textual_inversion(str(path))
    ids = pipe.tokenizer.convert_tokens_to_ids(["<cat-toy>", "<cat-toy>_1"])
    table = pipe.text_encoder.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(table[ids], vectors)
    assert pipe.maybe_convert_prompt("a <cat-toy>", pipe.tokenizer) == "a <cat-toy> <cat-toy>_1"

    single = save_learned_embeds(tmp_path / "single.safetensors", "<dog>", vectors[0])
    pipe.load_textual_inversion(str(single))  # a single vector: one token, no "_1"
    table = pipe.text_encoder.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(table[pipe.tokenizer.convert_tokens_to_ids("<dog>")], vectors[0])
    assert pipe.maybe_convert_prompt("a <dog>", pipe.tokenizer) == "a <dog>"


def test_load_embeddings_takes_one_path_as_a_list_of_one(tmp_path: Path) -> None:
    """As diffusers' load_textual_inversion takes a str or a list; a str was read letter by letter."""
    from zoodip.embeddings import load_embeddings

    path = tmp_path / "learned_embeds.safetensors"
    save_learned_embeds(path, "<a>", np.ones((1, 8), np.float32))
    for one in (str(path), path):
        added, groups = load_embeddings(one)
        assert groups == [["<a>"]] and list(added) == ["<a>"]
    with pytest.raises(ZoodipError, match="embeddings must be a list of paths"):
        load_embeddings(None)


def test_a_token_given_for_a_file_is_one_word(tmp_path: Path) -> None:
    path = tmp_path / "learned_embeds.safetensors"
    save_learned_embeds(path, "<a>", np.ones((1, 8), np.float32))
    for token in ("my dog", " <a>", "", "<a>\n"):
        with pytest.raises(ZoodipError, match="use one word without spaces"):
            load_embedding_file(path, token=token)
    assert load_embedding_file(path, token="<b>")[0] == "<b>"


def test_load_embeddings_compares_clip_skip_as_a_number(tmp_path: Path) -> None:
    """A clip_skip of another kind was compared with the file's number and warned of a mismatch that was not one."""
    import warnings

    from zoodip.embeddings import load_embeddings

    path = tmp_path / "learned_embeds.safetensors"
    save_learned_embeds(path, "<a>", np.ones((1, 8), np.float32), metadata={"settings": json.dumps({"clip_skip": 1})})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(load_embeddings([path], clip_skip=np.int64(1))[0]) == ["<a>"]
    with pytest.warns(UserWarning, match="trained at clip_skip=1 and is used at clip_skip=0"):
        load_embeddings([path], clip_skip=0)
    for bad in ("1", 1.0, True, -1):
        with pytest.raises(ZoodipError, match="clip_skip must be a whole number"):
            load_embeddings([path], clip_skip=bad)


def test_a_folder_skips_a_file_whose_token_is_a_vocabulary_word(tmp_path):
    """It stopped the whole folder at generate time; every other unusable file is skipped with a warning."""
    from zoodip.embeddings import load_embeddings
    from zoodip.tokenizer import CLIPTokenizer
    from zoodip_export.clip_vocab import write_clip_tokenizer_files

    tokenizer = CLIPTokenizer.from_folder(write_clip_tokenizer_files(tmp_path / "tokenizer"))
    save_learned_embeds(tmp_path / "dogword.safetensors", "dog", np.ones((1, 8), np.float32))
    save_learned_embeds(tmp_path / "fine.safetensors", "<fine>", np.ones((1, 8), np.float32))
    with pytest.warns(UserWarning, match="skipped dogword.safetensors .*'dog' is already a word of the vocabulary"):
        added, _ = load_embeddings([tmp_path], tokenizer, 8)
    assert list(added) == ["<fine>"]
    with pytest.raises(ZoodipError, match="is already a word of the vocabulary, which it would take over"):
        load_embeddings([tmp_path / "dogword.safetensors"], tokenizer, 8)
    with pytest.raises(ZoodipError, match="an embedding path is empty"):
        load_embeddings([""], tokenizer, 8)


def test_a_token_with_spaces_is_not_saved_and_a_file_holding_one_is_skipped_in_a_folder(tmp_path):
    """A prompt cannot name such a token; a file written by another tool with one stopped every generation."""
    from safetensors.numpy import save_file

    from zoodip.embeddings import load_embeddings

    for token in ("<s p>", "<n\nl>"):
        with pytest.raises(ZoodipError, match="use one word without spaces"):
            save_learned_embeds(tmp_path / "x.safetensors", token, np.ones((1, 8), np.float32))
    save_file({"<n\nl>": np.ones((1, 8), np.float32)}, str(tmp_path / "nl.safetensors"))
    save_learned_embeds(tmp_path / "fine.safetensors", "<fine>", np.ones((1, 8), np.float32))
    with pytest.warns(UserWarning, match=r"skipped nl.safetensors .*holds spaces"):
        added, _ = load_embeddings([tmp_path])
    assert list(added) == ["<fine>"]
    renamed, _ = load_embeddings([(str(tmp_path / "nl.safetensors"), "<nl>")])
    assert list(renamed) == ["<nl>"]
    save_file({"": np.ones((1, 8), np.float32)}, str(tmp_path / "empty.safetensors"))  # said as "holds spaces" before
    with pytest.raises(ZoodipError, match=r"its token '' is empty, which a prompt cannot name"):
        load_embeddings([tmp_path / "empty.safetensors"])


def test_a_run_folder_gives_its_embedding_not_its_first_step_snapshot(tmp_path):
    """The folder's files were read in name order: a --save_steps run's step-1 snapshot stood for the token, and each
    later snapshot was said as a clash (hundreds of lines)."""
    import warnings

    from zoodip.embeddings import load_embeddings, save_a1111_embedding, save_learned_embeds

    def loaded(folder):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            added, _ = load_embeddings([folder])
        return {name: float(vectors.ravel()[0]) for name, vectors in added.items()}, [str(w.message) for w in said]

    for step in (1, 2, 10):
        save_learned_embeds(tmp_path / f"learned_embeds-steps-{step}.safetensors", "<s>", np.full(4, step, np.float32))
    added, said = loaded(tmp_path)
    assert added == {"<s>": 10} and said == [f"{tmp_path} holds a run: its 2 earlier step snapshots are not used (name "
                                             "one to use it)"]  # a cancelled run's folder: its latest snapshot
    (tmp_path / "learned_embeds-steps-10.safetensors").write_bytes(b"damaged")
    added, said = loaded(tmp_path)
    assert added == {"<s>": 2} and len(said) == 2 and said[1].startswith("skipped 1 step snapshots")  # newest readable
    save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<s>", np.full(4, 99, np.float32))
    save_a1111_embedding(tmp_path / "s.safetensors", "<s>", np.full(4, 99, np.float32))  # --a1111's copy: no clash,
    save_learned_embeds(tmp_path / "learned_embeds-steps-3.safetensors", "<t>", np.full(4, 3, np.float32))  # A1111's
    added, said = loaded(tmp_path)  # trigger word joins; another token's snapshot loads
    assert added == {"<s>": 99, "s": 99, "<t>": 3} and len(said) == 2 and "its 2 earlier" in said[0]
    wide = tmp_path / "wide"  # a run on another width: one line for its snapshots, not one a step
    wide.mkdir()
    for name in ("learned_embeds.safetensors", *(f"learned_embeds-steps-{step}.safetensors" for step in range(1, 9))):
        save_learned_embeds(wide / name, "<s>", np.ones(8, np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_embeddings([wide], hidden=4)[0] == {}
    assert len(caught) == 2 and str(caught[1].message).startswith(f"skipped 8 step snapshots of the folder {wide}: ")


def test_a_missing_pt_file_is_said_to_be_missing_not_a_pickle(tmp_path):
    """--embedding typo.pt was told to convert its pickle with torch: the file was not there at all."""
    with pytest.raises(ZoodipError, match=r"typo\.pt does not exist"):
        load_embedding_file(tmp_path / "typo.pt")
    (tmp_path / "real.pt").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ZoodipError, match=r"real\.pt is a pickle"):
        load_embedding_file(tmp_path / "real.pt")
