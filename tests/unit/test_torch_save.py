"""zoodip.torch_save and the embedding loader on torch.save files: the layouts people have, read without torch,
and files that try to run code, lie about their storages or are damaged, refused in one line."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zoodip.embeddings import load_embedding_file, load_embeddings
from zoodip.errors import ZoodipError
from zoodip.torch_save import StoredTensor, read_torch_save

torch = pytest.importorskip("torch")


def the_one_tensor(saved):
    """A select() for files holding one tensor, at any depth."""
    found = []

    def walk(value):
        if isinstance(value, StoredTensor):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(saved)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tensors_come_back_exactly(tmp_path, dtype):
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    for name, tensor in (("whole", base), ("view", base[1:3, ::2]), ("transposed", base.t()), ("scalar-row", base[2])):
        path = tmp_path / f"{name}.pt"
        torch.save({"x": tensor}, path)  # a view saves its whole storage, with an offset and strides
        got = read_torch_save(path, the_one_tensor)
        assert np.array_equal(got, tensor.float().numpy() if dtype == torch.bfloat16 else tensor.numpy()), name


def test_diffusers_bin_and_a1111_pt_load_as_their_tools_name_them(tmp_path):
    vectors = torch.randn(2, 768)
    torch.save({"<cat-toy>": vectors[0]}, tmp_path / "learned_embeds.bin")  # diffusers' older format
    token, got = load_embedding_file(tmp_path / "learned_embeds.bin")
    assert token == "<cat-toy>" and np.array_equal(got, vectors[:1].numpy())
    a1111 = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.half().requires_grad_()},
             "name": "whatever", "step": 3000, "sd_checkpoint": "abc123", "sd_checkpoint_name": None}
    torch.save(a1111, tmp_path / "pixel-art.pt")  # A1111: the trigger word is the file name, not "name"
    added, groups = load_embeddings([tmp_path / "pixel-art.pt"])
    assert groups == [["<pixel-art>", "pixel-art"]]
    assert np.array_equal(added["pixel-art"], vectors.half().float().numpy())
    torch.save(torch.nn.Parameter(vectors), tmp_path / "bare.pt")  # a bare parameter: named by its file
    assert load_embedding_file(tmp_path / "bare.pt")[0] == "<bare>"
    os.replace(tmp_path / "bare.pt", tmp_path / "renamed.safetensors")  # a torch.save file under another suffix
    assert np.array_equal(load_embedding_file(tmp_path / "renamed.safetensors")[1], vectors.numpy())


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_names_a_function_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"<x>": torch.zeros(768), "payload": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ZoodipError, match=r"evil.pt cannot be read as a torch.save file: it holds a (posix|nt)\.system "
                                          r"object, and zoodip unpickles only tensors and plain containers"):
        load_embedding_file(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    torch.save({"<x>": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(768))})}, tmp_path / "module.pt")
    with pytest.raises(ZoodipError, match="ParameterDict object"):
        load_embedding_file(tmp_path / "module.pt")


def rewrite(path: Path, out: Path, edit) -> Path:
    """``path``'s zip with each member's bytes passed through ``edit(name, data)``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, edit(info.filename, src.read(info)))
    return out


def test_files_that_lie_about_their_storages_are_refused(tmp_path):
    torch.save({"<x>": torch.arange(768, dtype=torch.float32)}, tmp_path / "good.pt")
    short = rewrite(tmp_path / "good.pt", tmp_path / "short.pt",
                    lambda name, data: data[:-4] if name.endswith("data/0") else data)
    with pytest.raises(ZoodipError, match="short.pt cannot be read.*storage 0 takes 3068 bytes, not the 768 elements"):
        load_embedding_file(short)
    # The pickle says the tensor starts 5 elements in (its offset, right after the storage reference: BINPERSID,
    # BININT1 0), so its 768 elements reach past the storage.
    assert zipfile.ZipFile(tmp_path / "good.pt").read("good/data.pkl").count(b"QK\x00") == 1
    shifted = rewrite(tmp_path / "good.pt", tmp_path / "shifted.pt",
                      lambda name, data: data.replace(b"QK\x00", b"QK\x05") if name.endswith("data.pkl") else data)
    with pytest.raises(ZoodipError, match="reaches element 772 of a storage of 768"):
        load_embedding_file(shifted)


def test_layouts_that_are_not_embeddings_are_named(tmp_path):
    torch.save({"state_dict": {f"layer{i}.weight": torch.zeros(4, 4) for i in range(3)}}, tmp_path / "model.ckpt")
    with pytest.raises(ZoodipError, match="holds 3 tensors .*state_dict.layer0.weight.*LoRA or a model checkpoint"):
        load_embedding_file(tmp_path / "model.ckpt")
    torch.save({"<x>": torch.zeros(76, 768)}, tmp_path / "long.pt")
    with pytest.raises(ZoodipError, match="larger than any textual-inversion embedding"):
        load_embedding_file(tmp_path / "long.pt")
    torch.save({"<x>": torch.zeros(768, dtype=torch.int64)}, tmp_path / "ints.pt")
    with pytest.raises(ZoodipError, match="stores its embedding as I64, not floats"):
        load_embedding_file(tmp_path / "ints.pt")
    torch.save({"step": 3}, tmp_path / "empty.pt")
    with pytest.raises(ZoodipError, match="holds no tensors"):
        load_embedding_file(tmp_path / "empty.pt")


def test_legacy_and_damaged_files_are_one_line(tmp_path):
    torch.save({"<x>": torch.zeros(768)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ZoodipError, match="legacy format.*pt_embedding_to_safetensors.py"):
        load_embedding_file(tmp_path / "legacy.pt")
    torch.save({"<x>": torch.zeros(768)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.bin").write_bytes(b"PK\x03\x04" + os.urandom(200))
    for name in ("cut.pt", "noise.bin"):
        with pytest.raises(ZoodipError, match=f"{name}"):
            load_embedding_file(tmp_path / name)
    with pytest.raises(ZoodipError, match="does not exist"):
        load_embedding_file(tmp_path / "missing.pt")


def test_a_pickle_cannot_rewrite_a_tensor_record_after_it_is_checked(tmp_path):
    """A pickle's BUILD instruction sets attributes on the object just made, past a frozen dataclass's guard:
    the layout is checked again when the numbers are read. The file is written by hand, as torch never would."""
    def pickled(after_tensor: bytes) -> bytes:
        return (b"\x80\x02}X\x03\x00\x00\x00<x>ctorch._utils\n_rebuild_tensor_v2\n"
                b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuM\x00\x03tQ"
                b"K\x00M\x00\x03\x85K\x01\x85\x89tR" + after_tensor + b"s.")

    negative_offset = b"}X\x06\x00\x00\x00offsetJ\xfb\xff\xff\xffsb"  # {"offset": -5}, then BUILD
    for name, after in (("plain", b""), ("rewritten", negative_offset)):
        with zipfile.ZipFile(tmp_path / f"{name}.pt", "w") as archive:
            archive.writestr("a/data.pkl", pickled(after))
            archive.writestr("a/data/0", np.arange(768, dtype="<f4").tobytes())
    assert np.array_equal(load_embedding_file(tmp_path / "plain.pt")[1][0], np.arange(768))  # the hand-made file reads
    with pytest.raises(ZoodipError, match="rewritten.pt cannot be read as a torch.save file: a tensor has an invalid"):
        load_embedding_file(tmp_path / "rewritten.pt")


def test_nested_and_self_containing_pickles_end_in_one_line(tmp_path):
    deep = {"<x>": torch.zeros(768)}
    for _ in range(50):
        deep = {"d": deep}
    cyclic = {"<x>": torch.zeros(768)}
    cyclic["self"] = cyclic  # the pickle's memo makes the dict contain itself
    for name, saved in (("deep", deep), ("cyclic", cyclic)):
        torch.save(saved, tmp_path / f"{name}.pt")
    with pytest.raises(ZoodipError, match="holds no tensors"):
        load_embedding_file(tmp_path / "deep.pt")
    with pytest.raises(ZoodipError, match=r"holds 4 tensors \(<x>, self.<x>, self.self.<x>"):  # not a RecursionError
        load_embedding_file(tmp_path / "cyclic.pt")


def test_a_pickle_cannot_change_what_later_reads_resolve_names_to(tmp_path):
    """BUILD on an object find_class returned: the read after it sees fresh objects."""
    torch.save({"<x>": torch.arange(768, dtype=torch.float32)}, tmp_path / "good.pt")
    float_storage = b"ctorch\nFloatStorage\n"
    tamper = (b"\x80\x02" + float_storage + b"}X\x04\x00\x00\x00nameX\x0b\x00\x00\x00HalfStoragesb"  # its name -> Half
              b"ctorch._utils\n_rebuild_tensor_v2\n" b"N}X\x0c\x00\x00\x00__defaults__(K\x07ts\x86b"  # and defaults
              b"\x86.")
    with zipfile.ZipFile(tmp_path / "tamper.pt", "w") as archive:
        archive.writestr("a/data.pkl", tamper)
    with pytest.raises(ZoodipError, match="holds no tensors"):
        load_embedding_file(tmp_path / "tamper.pt")
    assert np.array_equal(load_embedding_file(tmp_path / "good.pt")[1][0], np.arange(768))


def test_a_safetensors_file_under_a_pickle_suffix_is_read_as_what_it_is(tmp_path):
    from zoodip.embeddings import save_learned_embeds

    vectors = np.random.default_rng(0).standard_normal((1, 768)).astype(np.float32)
    saved = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<x>", vectors)
    saved.rename(tmp_path / "learned_embeds.bin")
    token, got = load_embedding_file(tmp_path / "learned_embeds.bin")
    assert token == "<x>" and np.array_equal(got, vectors)
