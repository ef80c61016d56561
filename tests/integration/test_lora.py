"""LoRAs fused at export (``zoodip export SRC OUT --lora FILE[:SCALE]``): kohya's and diffusers' layouts land on the
weights a by-hand fusion changes (the same images), and every file that does not fit is one line before any output."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import assert_one_line_error, run_cli
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.model import ExportedModel
from zoodip_export.export_model import export_model
from zoodip_export.lora import LoraSpec, parse_lora
from zoodip_export.onnx_export import load_text_encoder, load_unet

RANK = 4
# (component, module path, weight shape) of the tiny model: a linear attention weight, a 1x1 and a 3x3 convolution,
# the text encoder's query projection.
LAYERS = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
          ("unet", "down_blocks.0.attentions.0.proj_in"),
          ("unet", "mid_block.resnets.0.conv1"),
          ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")]


def factors(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    up = torch.randn(shape[0], RANK, *([1, 1] if len(shape) == 4 else []), generator=generator) * 0.3
    down = torch.randn(RANK, shape[1], *shape[2:], generator=generator) * 0.3
    return up, down


def kohya_file(path, shapes: dict[str, tuple[int, ...]], alpha: float = 2.0):
    """A LoRA in kohya's layout (A1111's), names written out by hand: lora_unet_<path with _>."""
    tensors = {}
    for i, (component, module) in enumerate(LAYERS):
        prefix = ("lora_unet_" if component == "unet" else "lora_te_") + module.replace(".", "_")
        up, down = factors(shapes[module], i)
        tensors |= {f"{prefix}.lora_up.weight": up, f"{prefix}.lora_down.weight": down,
                    f"{prefix}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path))
    return path


def model_shapes(folder) -> dict[str, tuple[int, ...]]:
    unet, text = dict(load_unet(folder / "unet").named_modules()), dict(load_text_encoder(folder / "text_encoder").named_modules())
    return {module: tuple((unet if component == "unet" else text)[module].weight.shape) for component, module in LAYERS}


def fused_by_hand(source, dest, shapes, scale: float, alpha: float):
    """``source`` with W + scale * alpha / r * up @ down written into each weight, by module path."""
    shutil.copytree(source, dest)
    for component, loader in (("unet", load_unet), ("text_encoder", load_text_encoder)):
        model = loader(dest / component)
        modules = dict(model.named_modules())
        for i, (owner, module) in enumerate(LAYERS):
            if owner == component:
                up, down = factors(shapes[module], i)
                weight = modules[module].weight
                weight += (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (scale * alpha / RANK)
        model.save_pretrained(str(dest / component), safe_serialization=True)
    return dest


def image(folder) -> np.ndarray:
    model = ExportedModel.load(folder)
    return np.asarray(generate(model, "a red star", steps=4, seed=1)[0], dtype=np.int64)


def export_fp32(source, out, **kwargs):
    return export_model(source, out, precision="fp32", parity=False, progress=False, curvature_samples=0, **kwargs)


@pytest.mark.slow
def test_kohya_and_diffusers_layouts_fuse_as_by_hand(tiny_sd_folder, tmp_path) -> None:
    shapes = model_shapes(tiny_sd_folder)
    lora = kohya_file(tmp_path / "style.safetensors", shapes)
    manifest = export_fp32(tiny_sd_folder, tmp_path / "fused", loras=[f"{lora}:0.7"])
    export_fp32(fused_by_hand(tiny_sd_folder, tmp_path / "by-hand", shapes, 0.7, 2.0), tmp_path / "ref")
    export_fp32(tiny_sd_folder, tmp_path / "base")
    fused, ref, base = image(tmp_path / "fused"), image(tmp_path / "ref"), image(tmp_path / "base")
    assert np.abs(fused - ref).max() <= 1 and np.abs(fused - base).mean() > 1.0
    (entry,) = manifest["source"]["loras"]
    assert entry["file"] == "style.safetensors" and entry["scale"] == 0.7 and len(entry["sha256"]) == 64
    assert not any(p.name.startswith("_source") for p in (tmp_path / "fused").iterdir())
    assert (tiny_sd_folder / "unet").is_dir() and not (tiny_sd_folder / "unet").is_symlink()  # the source untouched

    # diffusers' PEFT layout (lora_A = down, lora_B = up) of the same factors, at scale 1, its alpha in the file's
    # metadata as recent diffusers writes it (save_lora_weights(..., unet_lora_adapter_metadata=...)): alpha 8, r 4.
    from safetensors.torch import load_file

    kohya = load_file(str(lora))
    peft = {}
    for component, module in LAYERS:
        old = ("lora_unet_" if component == "unet" else "lora_te_") + module.replace(".", "_")
        peft[f"{component}.{module}.lora_A.weight"] = kohya[f"{old}.lora_down.weight"]
        peft[f"{component}.{module}.lora_B.weight"] = kohya[f"{old}.lora_up.weight"]
    metadata = {f"{component}.{key}": value for component in ("unet", "text_encoder")
                for key, value in (("r", RANK), ("lora_alpha", 8))}
    save_file(peft, str(tmp_path / "peft.safetensors"), metadata={"lora_adapter_metadata": json.dumps(metadata)})
    export_fp32(tiny_sd_folder, tmp_path / "peft", loras=[LoraSpec(tmp_path / "peft.safetensors", 1.0)])
    export_fp32(fused_by_hand(tiny_sd_folder, tmp_path / "by-hand-1", shapes, 1.0, 8.0), tmp_path / "ref-1")
    assert np.abs(image(tmp_path / "peft") - image(tmp_path / "ref-1")).max() <= 1


def _mutated(path, tensors: dict[str, torch.Tensor], drop: str = "", **extra: torch.Tensor):
    save_file({k: v for k, v in tensors.items() if not drop or drop not in k} | extra, str(path))
    return path


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"), ("pickle", "only .safetensors"), ("damaged", "cannot read it"),
    ("loha", "is LoHa"), ("sdxl", "is SDXL"), ("unknown-key", "no LoRA weight"), ("half", "only one of its two"),
    ("not-in-model", "not in this model"), ("wrong-shape", "do not make the model's weight"),
    ("ldm-names", "original SD layout"), ("nan", "non-finite"), ("huge-scale", "past +-10"),
    ("overflow", "gives non-finite weights"), ("huge-alpha", "far past what LoRAs use"), ("twice", "given twice"),
    ("folder", "is a folder"), ("rank-0", "not two matrices of one rank >= 1"), ("int-factors", "no floats"),
    ("both-spellings", "twice"), ("norm-layer", "which no LoRA changes"), ("peft-patterns", "per-layer ranks"),
    ("empty", "--lora is empty"), ("dotted-and-peft", "twice"), ("mixed-layouts", "has its factors in two layouts"),
    ("peft-alpha-disagrees", "where the file's metadata says rank 4 and alpha / r 2"),
    ("peft-rank-disagrees", "has rank 8 where the file's metadata says rank 4"), ("peft-te-only", "gives no r or lora_alpha for the unet"),
    ("copy", "the same file (the same bytes)")])
def test_a_lora_that_does_not_fit_is_one_line_and_nothing_written(tiny_sd_folder, tmp_path, capsys, case,
                                                                  needle) -> None:
    good = kohya_file(tmp_path / "good.safetensors", model_shapes(tiny_sd_folder))
    from safetensors.torch import load_file

    tensors = load_file(str(good))
    bad = tmp_path / f"{case}.safetensors"
    arg = str(bad)
    if case == "missing":
        arg = str(tmp_path / "nowhere.safetensors")
    elif case == "pickle":
        torch.save(tensors, tmp_path / "lora.pt")
        arg = str(tmp_path / "lora.pt")
    elif case == "damaged":
        bad.write_bytes(good.read_bytes()[:200])
    elif case == "loha":
        _mutated(bad, tensors, **{"lora_unet_mid_block_resnets_0_conv1.hada_w1_a": torch.ones(2, 2)})
    elif case == "sdxl":
        _mutated(bad, tensors, **{"lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0)})
    elif case == "unknown-key":
        _mutated(bad, tensors, **{"some_other.weight": torch.ones(2)})
    elif case == "half":
        _mutated(bad, tensors, drop="mid_block_resnets_0_conv1.lora_up")
    elif case == "not-in-model":
        _mutated(bad, tensors, **{"lora_unet_down_blocks_9_conv.lora_up.weight": torch.ones(4, 1),
                                  "lora_unet_down_blocks_9_conv.lora_down.weight": torch.ones(1, 4)})
    elif case == "wrong-shape":  # an SD2-sized key projection (1024 wide text) on an SD1-shaped model
        name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
        _mutated(bad, tensors, drop=name, **{f"{name}.lora_up.weight": torch.ones(32, 4),
                                             f"{name}.lora_down.weight": torch.ones(4, 1024)})
    elif case == "ldm-names":
        _mutated(bad, tensors, **{"lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.ones(4, 1),
                                  "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.ones(1, 4)})
    elif case == "nan":
        tensors["lora_unet_mid_block_resnets_0_conv1.lora_up.weight"][0, 0] = float("nan")
        _mutated(bad, tensors)
    elif case == "huge-scale":
        arg = f"{good}:20"
    elif case == "overflow":
        tensors["lora_unet_mid_block_resnets_0_conv1.lora_up.weight"] *= 1e30  # finite factors, an infinite product
        tensors["lora_unet_mid_block_resnets_0_conv1.lora_down.weight"] *= 1e30
        _mutated(bad, tensors)
    elif case == "huge-alpha":
        _mutated(bad, tensors, **{"lora_unet_mid_block_resnets_0_conv1.alpha": torch.tensor(3e38)})
    elif case == "folder":
        arg = str(tmp_path)
    elif case == "empty":
        arg = ""
    elif case == "rank-0":
        name = "lora_unet_mid_block_resnets_0_conv1"
        _mutated(bad, tensors, drop=name, **{f"{name}.lora_up.weight": torch.ones(64, 0, 1, 1),
                                             f"{name}.lora_down.weight": torch.ones(0, 64, 3, 3)})
    elif case == "int-factors":
        tensors["lora_unet_mid_block_resnets_0_conv1.lora_up.weight"] = torch.ones(64, RANK, 1, 1, dtype=torch.int32)
        _mutated(bad, tensors)
    elif case == "both-spellings":  # kohya's and diffusers' names of one layer: it would be fused twice
        name = "down_blocks.0.attentions.0.proj_in"
        kohya = "lora_unet_" + name.replace(".", "_")
        _mutated(bad, tensors, **{f"unet.{name}.lora_A.weight": tensors[f"{kohya}.lora_down.weight"].clone(),
                                  f"unet.{name}.lora_B.weight": tensors[f"{kohya}.lora_up.weight"].clone()})
    elif case == "norm-layer":
        _mutated(bad, tensors, **{"lora_unet_mid_block_resnets_0_norm1.lora_up.weight": torch.ones(64, 1),
                                  "lora_unet_mid_block_resnets_0_norm1.lora_down.weight": torch.ones(1, 64)})
    elif case in ("dotted-and-peft", "mixed-layouts"):  # kohya's dotted spelling, or one factor in each layout
        name = "down_blocks.0.attentions.0.proj_in"
        kohya = "lora_unet_" + name.replace(".", "_")
        down, up = tensors.pop(f"{kohya}.lora_down.weight"), tensors.pop(f"{kohya}.lora_up.weight")
        extra = {f"unet.{name}.lora_A.weight": down.clone(), f"unet.{name}.lora_B.weight": up.clone()}
        if case == "dotted-and-peft":
            extra |= {f"lora_unet_{name}.lora_down.weight": down, f"lora_unet_{name}.lora_up.weight": up}
        else:
            extra = {f"lora_unet_{name}.lora_down.weight": down, f"unet.{name}.lora_B.weight": up}
        _mutated(bad, {k: v for k, v in tensors.items() if not k.startswith(kohya)}, **extra)
    elif case.startswith("peft-") and case != "peft-patterns":
        rank = 8 if case == "peft-rank-disagrees" else RANK
        peft = {f"unet.{LAYERS[0][1]}.lora_A.weight": torch.ones(rank, 32) * 0.01,
                f"unet.{LAYERS[0][1]}.lora_B.weight": torch.ones(32, rank) * 0.01}
        if case == "peft-alpha-disagrees":
            peft[f"unet.{LAYERS[0][1]}.alpha"] = torch.tensor(4.0)  # alpha / r 1, the metadata's 2
        component = "text_encoder" if case == "peft-te-only" else "unet"
        save_file(peft, str(bad), metadata={"lora_adapter_metadata": json.dumps(
            {f"{component}.r": RANK, f"{component}.lora_alpha": 8})})
    elif case == "copy":
        shutil.copyfile(good, tmp_path / "copy.safetensors")
        arg = str(tmp_path / "copy.safetensors")
    elif case == "peft-patterns":
        peft = {f"unet.{LAYERS[0][1]}.lora_A.weight": torch.ones(RANK, 32),
                f"unet.{LAYERS[0][1]}.lora_B.weight": torch.ones(32, RANK)}
        save_file(peft, str(bad), metadata={"lora_adapter_metadata": json.dumps(
            {"unet.r": RANK, "unet.lora_alpha": 8, "unet.rank_pattern": {"to_k": 2}})})
    out = tmp_path / "out"
    extra = ["--lora", f"{good}:0.5"] if case in ("twice", "copy") else []
    code, _, err = run_cli(["export", tiny_sd_folder, out, "--lora", arg if case != "twice" else str(good), *extra,
                            "--precision", "fp32", "--no-parity", "--curvature-samples", "0", "--quiet"], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_a_damaged_source_is_named_as_without_a_lora(tiny_sd_folder, tmp_path, capsys) -> None:
    """The source's weights are loaded for the fusion as for the export: a truncated file or NaN is one line naming the
    source folder (not the staging folder the fused model is written to)."""
    lora = kohya_file(tmp_path / "style.safetensors", model_shapes(tiny_sd_folder))
    truncated, poisoned = tmp_path / "truncated", tmp_path / "poisoned"
    for folder in (truncated, poisoned):
        shutil.copytree(tiny_sd_folder, folder)
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    vae = poisoned / "vae" / "diffusion_pytorch_model.safetensors"  # a part the LoRA does not touch
    from safetensors.torch import load_file

    tensors = load_file(str(vae))
    next(iter(tensors.values())).view(-1)[0] = float("nan")
    save_file(tensors, str(vae))
    for source, needle in ((truncated, f"cannot load the UNet from {(truncated / 'unet').resolve()}"),
                           (poisoned, f"the VAE in {(poisoned / 'vae').resolve()} holds non-finite values")):
        out = tmp_path / f"out-{source.name}"
        code, _, err = run_cli(["export", source, out, "--lora", lora, "--precision", "fp32", "--no-parity",
                                "--curvature-samples", "0", "--quiet"], capsys)
        assert_one_line_error(code, err, needle)
        assert not out.exists()


def test_lora_arguments_read_a_scale_after_the_last_colon(tmp_path) -> None:
    (tmp_path / "a:b").mkdir()
    odd = tmp_path / "a:b" / "style.safetensors"  # a colon in the path (the file's own name may hold none)
    odd.write_bytes(b"")
    assert parse_lora(str(odd)) == LoraSpec(odd, 1.0)
    assert parse_lora(f"{odd}:0.8") == LoraSpec(odd, 0.8)
    assert parse_lora(f"{odd}:-1e-1") == LoraSpec(odd, -0.1)
    assert parse_lora(f"{odd}:.5").name == "style"
    for text, needle in ((f"{odd}:x", "no such file"), (f"{odd}:1e6", "past"), (f"{odd}:nan", "past"),
                         (f"{odd}:0", "0, which fuses nothing"), (f"{odd}:", "the scale after ':' is empty"),
                         (f"{odd}:0.5:0.5", "two scales given")):
        with pytest.raises(ZoodipError, match=needle):
            parse_lora(text)
    named = tmp_path / "style, v2.safetensors"
    named.write_bytes(b"")
    with pytest.raises(ZoodipError, match="A1111 names a LoRA by its file name"):
        parse_lora(str(named))


# -- what the SDK makes of an export's LoRAs: A1111's <lora:NAME:SCALE> tags, Lora hashes, zoodip info -------------
from zoodip.extra_networks import lora_hashes, tag_problems, take_out_tags  # noqa: E402


@pytest.fixture(scope="module")
def fused_export(tiny_sd_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    lora = kohya_file(folder / "style.safetensors", model_shapes(tiny_sd_folder))
    export_fp32(tiny_sd_folder, folder / "fused", loras=[f"{lora}:0.7"])
    return folder / "fused"


def test_tags_are_taken_out_as_a1111_does() -> None:
    text, calls = take_out_tags("a <lora:style:0.7> cat, <hypernet:x> <LoRA:y:0.5:0.2>, <lora:z:abc> "
                                "<lora:w:te=0.3:unet=0.4>")
    assert text == "a  cat,  ,  " and calls == [
        ("lora", "style", (0.7, 0.7)), ("hypernet", "x", (1.0, 1.0)), ("lora", "y", (0.5, 0.2)),  # text encoder, UNet
        ("lora", "z", (None, None)), ("lora", "w", (0.3, 0.4))]
    assert take_out_tags("a <b> c <d:>")[1] == [] and take_out_tags("(x:1.2) <lora:n:inf>")[1] == [("lora", "n",
                                                                                                    (None, None))]


def test_a_tag_left_unclosed_is_said_as_words_a1111_reads() -> None:
    class NoLoras:
        manifest: dict = {}

    for prompt, shown in (("a <lora:style:0.7 cat", "'<lora:style:0.7 cat'"), ("(a>b) <hypernet:", "'<hypernet:'"),
                          ("<LyCO:x, blue <lora:y:1>", "'<lyco:x, blue'"),  # A1111's pattern: the two as one tag
                          ("<lora:foo:1 <lora:bar:0.5>", "'<lora:foo:1'")):  # (found by a sweep: a multiplier too)
        assert [line for line in tag_problems(prompt, NoLoras()) if "no closing '>'" in line] == [
            f"the prompt's {shown} has no closing '>', so A1111 reads no tag there but words (or, before another tag, "
            "the two as one): close it to name a LoRA"]
    assert tag_problems("a <lora:> cat", NoLoras()) == []  # no tag by A1111's pattern, nor an unclosed one
    assert "the prompt's '<lora:a:1 x', '<lora:b' have no closing '>'" in tag_problems("<lora:a:1 x <lora:b", NoLoras())[0]


def test_a_tag_is_checked_against_the_loras_the_export_holds(fused_export) -> None:
    model = ExportedModel.load(fused_export)
    digest = model.manifest["source"]["loras"][0]["sha256"]
    assert lora_hashes(model) == f"style: {digest[:12]}"
    assert tag_problems("a <lora:style:0.7> cat", model) == []
    lacking, other_scale, hypernet = (tag_problems(f"a {tag} cat", model)
                                      for tag in ("<lora:other:1>", "<lora:style:0.5>", "<hypernet:h:1>"))
    assert "does not hold (it holds style at 0.7)" in lacking[0] and "--lora other.safetensors:1" in lacking[0]
    assert "fused at 0.7" in other_scale[0] and "kind zoodip has none of" in hypernet[0]
    assert len(tag_problems("a <lora:style:0.7:0.5> <lora:style:x>", model)) == 1  # UNet's multiplier, no number
    assert tag_problems("a <lora: style :0.7> <lora:sty\u0301le:1>", model) == tag_problems("<lora:stýle:1>", model)
    assert tag_problems("a <lora: style :0.7>", model) == []  # names compared stripped and composed (NFC)
    many = tag_problems(" ".join(f"<lora:n{i}:1>" for i in range(200)) + " <lora:style:0.2> <hypernet:h>", model)
    assert len(many) == 3 and "and 197 more" in many[0]  # one line per kind of problem, however many tags
    assert "'it'\"'\"'s.safetensors:1'" in tag_problems("<lora:it's:1>", model)[0]  # a command to paste, quoted


def test_generate_reads_the_tags_as_a1111_and_writes_lora_hashes(fused_export, tmp_path, capsys) -> None:
    from zoodip.image_parameters import read_parameters

    base = ["generate", "--model", fused_export, "--steps", "3", "--seed", "2", "--prompt-weighting", "a1111"]
    code, _, err = run_cli([*base, "--prompt", "a red star <lora:style:0.7>", "--out", tmp_path / "tag.png"], capsys)
    assert code == 0 and "warning" not in err, err
    assert run_cli([*base, "--prompt", "a red star ", "--out", tmp_path / "plain.png"], capsys)[0] == 0
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "tag.png")), np.asarray(Image.open(tmp_path / "plain.png")))
    digest = ExportedModel.load(fused_export).manifest["source"]["loras"][0]["sha256"][:12]
    assert f'Lora hashes: "style: {digest}"' in read_parameters(tmp_path / "tag.png")
    code, _, err = run_cli([*base, "--prompt", "a red star <lora:style:0.4>", "--out", tmp_path / "b.png"], capsys)
    assert code == 0 and err.count("warning: ") == 1 and "fused at 0.7" in err
    code, _, err = run_cli([*base, "--prompt", "a red star <lora:style:0.4>", "--hires-scale", "1.5", "--num-images",
                            "2", "--out", tmp_path / "h.png"], capsys)  # three passes read the prompt: said once
    assert code == 0 and err.count("warning: ") == 1 and "fused at 0.7" in err
    code, _, err = run_cli([*base[:-2], "--prompt", "a red star <lora:style:0.7>", "--out", tmp_path / "c.png"], capsys)
    assert code == 0 and err.count("warning: ") == 1 and "extra-network tag" in err and "read here as plain text" in err
    code, _, err = run_cli([*base, "--prompt", "a red star", "--negative-prompt", "<lora:style:1>", "--out",
                            tmp_path / "d.png"], capsys)  # A1111 reads a negative prompt's tag as words too
    assert code == 0 and err.count("warning: ") == 1 and "negative prompt's <lora:style:1> is read as words" in err
    code, out, _ = run_cli(["info", fused_export], capsys)
    assert code == 0 and f"LoRAs fused in: style at 0.7 (sha256 {digest})" in out


def test_an_image_made_with_loras_says_so_when_made_again_without_them(fused_export, tiny_export, tmp_path,
                                                                      capsys) -> None:
    image = tmp_path / "with-lora.png"
    assert run_cli(["generate", "--model", fused_export, "--prompt", "a red star", "--steps", "2", "--out", image],
                   capsys)[0] == 0
    code, _, err = run_cli(["generate", "--model", tiny_export, "--parameters-from", image, "--out",
                            tmp_path / "again.png"], capsys)
    assert code == 0 and "made with the LoRAs style: " in err and "this export holds none" in err


GOOD_ENTRY = {"file": "style.safetensors", "sha256": "ab" * 32, "scale": 0.7}


@pytest.mark.parametrize("source,needle", [
    ("x", "has source = 'x' of the wrong type"), ({"loras": "style"}, "source.loras = 'style' of the wrong type"),
    ({"loras": [1]}, "source.loras[0] = '1', not an object"),
    ({"loras": [{k: v for k, v in GOOD_ENTRY.items() if k != "sha256"}]}, "lacks source.loras[0].sha256"),
    ({"loras": [dict(GOOD_ENTRY, scale="0.7")]}, "source.loras[0].scale = '0.7' of the wrong type"),
    ({"loras": [dict(GOOD_ENTRY, scale=10 ** 400)]}, "not a finite number"),
    ({"loras": [dict(GOOD_ENTRY, file=" ")]}, "an empty source.loras[0].file"),
    ({"loras": [GOOD_ENTRY] * 65}, "more than 64"), ({"loras": [GOOD_ENTRY] * 2}, "names one LoRA file twice"),
    ("scheduler-list", "is not a JSON object (a scheduler config)")])
def test_a_damaged_source_entry_or_scheduler_config_is_one_line(tiny_export, tmp_path, capsys, source, needle) -> None:
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    manifest = json.loads((export / "manifest.json").read_text())
    if source == "scheduler-list":
        (export / "scheduler_config.json").write_text("[1, 2]")
        manifest["files"]["scheduler_config.json"] = {"bytes": 6, "sha256": hashlib.sha256(b"[1, 2]").hexdigest()}
    else:
        manifest["source"] = source
    (export / "manifest.json").write_text(json.dumps(manifest))
    for args in (["info", export], ["generate", "--model", export, "--prompt", "a", "--out", tmp_path / "a.png"]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, needle)


def test_peft_metadata_without_lora_alpha_takes_peft_s_default(tmp_path) -> None:
    """PEFT's LoraConfig defaults lora_alpha to 8 (not to r): a file whose metadata gives r alone fuses at 8 / r."""
    from zoodip_export.lora import read_lora

    path = tmp_path / "r-only.safetensors"
    save_file({f"unet.{LAYERS[0][1]}.lora_A.weight": torch.ones(RANK, 32),
               f"unet.{LAYERS[0][1]}.lora_B.weight": torch.ones(32, RANK)}, str(path),
              metadata={"lora_adapter_metadata": json.dumps({"unet.r": RANK})})
    (layer,) = read_lora(LoraSpec(path, 1.0))["unet"].values()
    assert layer.alpha == pytest.approx(8.0)
