"""Copy a reference folder into an equivalent one whose text-embedding space is wider (default 768, SD1.5's).

The reference model's text encoder is 64 wide, below ZOODiP's subspace history (tau = 128), so the
subspace-gradient question is degenerate there. This builds the same model with a 768-wide text encoder
(and UNet cross-attention) that computes exactly the same thing on every real token: the 64-d residual
stream is embedded isometrically into 768-d, so real tokens span a 63-d subspace of a 768-d space,
as SD's tokens occupy a small part of theirs. A learned embedding is then searched in 768 dimensions,
most of which only act through layer-norm statistics.

How the embedding stays exact: the text encoder is pre-LayerNorm, so its residual stream ``x`` is only
ever read through LayerNorms, which discard its mean. With ``C`` the 64-d centering matrix and ``Q``
(768x64) orthonormal columns orthogonal to the all-ones vector, the wide stream is ``X = Q C x``: its
mean is 0 and its variance is ``|Cx|^2 / 768``, so a 768-d LayerNorm (eps scaled by 64/768, no affine)
gives ``s Q n(x)`` with ``s = sqrt(768/64)`` and ``n`` the 64-d normalization. Every LayerNorm affine
is folded into the linear layer that reads it (``W diag(gamma) Q^T / s``, bias ``W beta + b``); every
write into the stream is mapped by ``Q C``; attention heads keep their 16 dimensions, zero-padded to
192 (queries scaled by ``sqrt(192/16)`` to keep the softmax temperature); the final LayerNorm's shift
goes into its (wide) bias so that the UNet's bias-free ``to_k``/``to_v`` read the same keys and values.

    .venv/bin/python reference/widen_text.py --out .cache/reference-wide768
    .venv/bin/python benchmarks/quality.py --model .cache/reference-wide768 ...
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO, check_new_output, repo_relative, write_folder_beside  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.paths import lies_within  # noqa: E402


def embedding_basis(narrow: int, wide: int, seed: int) -> torch.Tensor:
    """``Q``: ``wide x narrow`` orthonormal columns, each orthogonal to the all-ones vector."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(wide, narrow, generator=g, dtype=torch.float64)
    raw -= raw.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(raw)
    return q


def widen_state(text: dict[str, torch.Tensor], unet: dict[str, torch.Tensor], heads: int, q: torch.Tensor,
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The wide text-encoder state and the UNet state with wide cross-attention inputs."""
    wide, narrow = q.shape
    s = math.sqrt(wide / narrow)
    center = torch.eye(narrow, dtype=torch.float64) - 1.0 / narrow
    write = q @ center  # narrow stream -> wide stream
    head, wide_head = narrow // heads, wide // heads
    t = {k: v.double() for k, v in text.items()}
    out: dict[str, torch.Tensor] = {}

    def read(weight: torch.Tensor, bias: torch.Tensor | None, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A linear layer reading LayerNorm ``norm``: fold its affine, read the wide normalized stream."""
        gamma, beta = t[norm + ".weight"], t[norm + ".bias"]
        b = weight @ beta + (bias if bias is not None else 0.0)
        return weight @ torch.diag(gamma) @ q.T / s, b

    def pad_heads(rows: torch.Tensor) -> torch.Tensor:
        """[narrow, ...] per-head rows -> [wide, ...], each head's rows first in its wide slot, zeros after."""
        padded = rows.new_zeros((wide, *rows.shape[1:]))
        for h in range(heads):
            padded[h * wide_head : h * wide_head + head] = rows[h * head : (h + 1) * head]
        return padded

    prefix = "text_model."
    out[prefix + "embeddings.token_embedding.weight"] = t[prefix + "embeddings.token_embedding.weight"] @ write.T
    out[prefix + "embeddings.position_embedding.weight"] = t[prefix + "embeddings.position_embedding.weight"] @ write.T
    if prefix + "embeddings.position_ids" in t:
        out[prefix + "embeddings.position_ids"] = text[prefix + "embeddings.position_ids"]
    layers = sorted({int(k.split(".")[3]) for k in t if k.startswith(prefix + "encoder.layers.")})
    for i in layers:
        p = f"{prefix}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj"):
            w, b = read(t[p + f"self_attn.{name}.weight"], t[p + f"self_attn.{name}.bias"], p + "layer_norm1")
            if name == "q_proj":  # softmax scale is head_dim^-1/2: keep the narrow head's temperature
                w, b = w * math.sqrt(wide_head / head), b * math.sqrt(wide_head / head)
            out[p + f"self_attn.{name}.weight"], out[p + f"self_attn.{name}.bias"] = pad_heads(w), pad_heads(b)
        out[p + "self_attn.out_proj.weight"] = write @ pad_heads(t[p + "self_attn.out_proj.weight"].T).T
        out[p + "self_attn.out_proj.bias"] = write @ t[p + "self_attn.out_proj.bias"]
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = read(t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"],
                                                                  p + "layer_norm2")
        out[p + "mlp.fc2.weight"] = write @ t[p + "mlp.fc2.weight"]
        out[p + "mlp.fc2.bias"] = write @ t[p + "mlp.fc2.bias"]
        for norm in ("layer_norm1", "layer_norm2"):
            out[p + norm + ".weight"] = torch.ones(wide, dtype=torch.float64)
            out[p + norm + ".bias"] = torch.zeros(wide, dtype=torch.float64)
    gamma, beta = t[prefix + "final_layer_norm.weight"], t[prefix + "final_layer_norm.bias"]
    out[prefix + "final_layer_norm.weight"] = torch.ones(wide, dtype=torch.float64)
    out[prefix + "final_layer_norm.bias"] = s * q @ (beta / gamma)
    text_out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}

    unet_out = dict(unet)
    for k, v in unet.items():
        if ".attn2.to_k." in k or ".attn2.to_v." in k:
            unet_out[k] = (v.double() @ torch.diag(gamma) @ q.T / s).float()
    return text_out, unet_out


def widen(src: Path, dest: Path, width: int = 768, seed: int = 0) -> dict:
    """Write ``dest``: ``src`` with a ``width``-wide text encoder; returns the parity check."""
    import shutil

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel.from_pretrained(src / "text_encoder").float().eval()
    unet = UNet2DConditionModel.from_pretrained(src / "unet").float().eval()
    narrow, heads = text.config.hidden_size, text.config.num_attention_heads
    if width <= narrow or width % heads:
        raise ZoodipError(f"width {width}: must exceed the text width {narrow} and divide by its {heads} heads")
    q = embedding_basis(narrow, width, seed)
    text_state, unet_state = widen_state(text.state_dict(), unet.state_dict(), heads, q)

    config = text.config.to_dict()
    config.update(hidden_size=width, projection_dim=width, layer_norm_eps=text.config.layer_norm_eps * narrow / width)
    wide_text = CLIPTextModel(CLIPTextConfig(**config)).eval()
    wide_text.load_state_dict(text_state)
    wide_unet = UNet2DConditionModel.from_config({**unet.config, "cross_attention_dim": width}).eval()
    wide_unet.load_state_dict(unet_state)

    # Same predictions on real captions (parity of the whole conditioning path).
    from zoodip.tokenizer import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_folder(src / "tokenizer")
    prompts = ["a photo of a small red star with stripes on a blue background", "a large green heart", ""]
    ids = torch.from_numpy(np.concatenate([tokenizer(p) for p in prompts]))
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(len(prompts), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                         generator=g)
    with torch.no_grad():
        ref = unet(sample, torch.tensor([700] * len(prompts)), text(ids).last_hidden_state).sample
        got = wide_unet(sample, torch.tensor([700] * len(prompts)), wide_text(ids).last_hidden_state).sample
    parity = float((got - ref).abs().max() / ref.abs().max())
    if parity > 1e-4:
        raise ZoodipError(f"widened model disagrees with {src} (relative max error {parity:.2e}): not written: "
                          f"the widening is not exact for this model's layers")

    dest = Path(dest).resolve()  # a link's target is replaced, not the link (rmtree refuses links; '.' is named)
    if lies_within(src, dest):  # the folder is replaced below: it must not be the one just read
        raise ZoodipError(f"{dest} is the source folder {src} or holds it: choose another destination")
    report = {"source": repo_relative(src), "width": width, "narrow_width": narrow, "basis_seed": seed,
              "unet_parity_rel_max": parity}

    def write(folder: Path) -> None:  # beside dest, then in its place: a Ctrl-C leaves dest as it was
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("text_encoder", "unet"))
        wide_text.save_pretrained(folder / "text_encoder", safe_serialization=True)
        wide_unet.save_pretrained(folder / "unet", safe_serialization=True)
        (folder / "widened.json").write_text(json.dumps(report, indent=2) + "\n")

    write_folder_beside(dest, write)
    return report


@script_main("--out was not written (an earlier --out is kept as it was)")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python reference/widen_text.py", description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=REPO / "reference" / "model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--seed", type=int, default=0, help="seed of the random embedding basis")
    try:
        args = p.parse_args(argv)
        if not (args.src / "model_index.json").is_file():
            raise ZoodipError(f"--src {args.src}: not a diffusers folder (no model_index.json): give the reference model's folder")
        text = json.loads((args.src / "text_encoder" / "config.json").read_text())  # widen()'s check, before any load
        narrow, heads = text["hidden_size"], text["num_attention_heads"]
        if args.width <= narrow or args.width % heads:
            raise ZoodipError(f"--width {args.width}: must exceed the text width {narrow} and divide by its {heads} heads")
        check_new_output(args.out, "--out", args.overwrite, sources=[args.src])
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: --src {args.src}: cannot read its text encoder's config.json ({exc})", file=sys.stderr)
        return ZoodipError.exit_code
    except ZoodipError as exc:
        return print_error(exc)
    print(json.dumps(widen(args.src, args.out, args.width, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
