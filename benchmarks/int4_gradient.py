"""Which layers' 4-bit error bends the gradient: cos(g_q, g) of the placeholder's exact gradient through the
fp32 source model with its weights replaced by what a W4A32 export stores, one layer group at a time.

    python benchmarks/int4_gradient.py SOURCE_FOLDER W4A32_EXPORT [--seeds 7,123]

The finite-difference fidelity of an export (benchmarks/fd_fidelity.py) is, over many directions, the
cosine between its gradient g_q and the fp32 model's g. This script gets that cosine without sampling
directions: torch autograd through the source model with each quantized weight swapped for its
dequantized value (per-channel int8 as W8A32 stores it, 4-bit blocks with the block and scale rule the
export's manifest records). Each row changes one group of the export's layers to int8 (or, for a group
the recipe keeps int8, to 4-bit), so the table shows what each group costs in fidelity and in bytes.
The problems are those of fd_fidelity.py (one photo, t = 700, the seed draws the noise).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from _fidelity import SEED, fixed_problem, placeholder_gradient  # noqa: E402  (the fidelity check's problem)
from _results_files import write_file  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.denoising_loss import DenoisingLoss  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.model import ExportedModel, RuntimeOptions  # noqa: E402
from zoodip.paths import check_output_file  # noqa: E402

PHOTOS = REPO / "sdk" / "zoodip" / "data" / "example_concept"

# Layer groups of a diffusers UNet, by module name. Every layer belongs to the first group that claims it.
GROUPS: dict[str, Callable[[str], bool]] = {
    "cross-attention keys and values (read the text)": lambda n: ".attn2.to_k" in n or ".attn2.to_v" in n,
    "cross-attention queries and output": lambda n: ".attn2." in n,
    "self-attention": lambda n: ".attn1." in n,
    "feed-forward": lambda n: ".ff." in n,
    "attention proj_in / proj_out": lambda n: ".proj_in" in n or ".proj_out" in n,
    "resnets": lambda n: ".resnets." in n,
}


def module_name(node_name: str) -> str:
    """The torch module of an exported node: ``/unet/down_blocks.0/.../to_k/MatMul`` -> ``down_blocks.0....to_k``."""
    return ".".join(node_name.split("/")[2:-1])


def _int8(weight: np.ndarray) -> np.ndarray:
    from zoodip_export.quantize_int8 import quantize_per_channel

    q, scale = quantize_per_channel(weight, 0)
    return q.astype(np.float32) * scale.reshape([-1] + [1] * (weight.ndim - 1))


def _int4(weight: np.ndarray, block: int, search: bool) -> np.ndarray:
    """A Linear's ``[N, K]`` or a Conv's ``[N, C, k, k]`` weight as the 4-bit blocks store it (a Conv along
    (row, column, channel), the exporter's im2col order)."""
    from zoodip_export.quantize_int4 import conv_as_matrix, dequantize_blockwise_int4, quantize_blockwise_int4

    nk = weight if weight.ndim == 2 else conv_as_matrix(weight)
    packed, scales = quantize_blockwise_int4(np.ascontiguousarray(nk, np.float32), block, search)
    restored = dequantize_blockwise_int4(packed, scales, nk.shape[1])
    if weight.ndim == 2:
        return restored
    n, c, kh, kw = weight.shape
    return restored.reshape(n, kh, kw, c).transpose(0, 3, 1, 2)


def _bytes(shape: tuple[int, ...], bits: int, block: int) -> int:
    from zoodip_export.quantize_int4 import int4_bytes

    n, k = shape[0], int(np.prod(shape[1:]))
    return n * k + 4 * n if bits == 8 else int4_bytes(n, k, block)


def measure(source: Path, export: Path, seeds: list[int]) -> list[dict]:
    """Rows ``{variant, four_bit_weights, bytes, cosine: {seed: cos}}``: W8A32, the export's own widths,
    and the export with each group of :data:`GROUPS` switched."""
    import torch

    from zoodip_export.onnx_export import TextEncoderGraph, UNetGraph, load_text_encoder, load_unet
    from zoodip_export.quantize_int4 import INT4_BLOCK

    manifest = ExportedModel.load(export).manifest
    layers = manifest["graphs"]["unet"].get("quantization", {}).get("layers")
    if not layers:
        raise ValueError(f"{export} has no per-layer widths in its manifest: give it a --recipe w4a32 export")
    text = TextEncoderGraph(load_text_encoder(source / "text_encoder").text_model, 77)
    unet = load_unet(source / "unet")
    graph = UNetGraph(unet)
    for parameter in (*unet.parameters(), *text.parameters()):
        parameter.requires_grad_(False)  # only the placeholder's gradient is wanted
    quantizable = (torch.nn.Linear, torch.nn.Conv2d)
    modules = {n: m for n, m in unet.named_modules() if isinstance(m, quantizable) and m.weight.numel() >= 256}
    modules.update({f"text.{n}": m for n, m in text.named_modules() if isinstance(m, torch.nn.Linear)})
    fp32 = {n: m.weight.detach().numpy().copy() for n, m in modules.items()}
    recipe = {module_name(node): record for node, record in layers.items() if module_name(node) in modules}
    four_bit = {n: _int4(fp32[n], r["block"] or INT4_BLOCK, r["scale_search"]) for n, r in recipe.items()}

    def load(widths: Callable[[str], int]) -> tuple[int, int]:
        """Set each UNet layer's weight to ``widths(name)`` bits (0: fp32; layers the recipe does not
        consider and the text encoder: int8, as in every W4A32 export); returns (4-bit weights, bytes)."""
        weights = total = 0
        with torch.no_grad():
            for n, m in modules.items():
                bits = widths(n) if n in recipe else (0 if widths(n) == 0 else 8)
                m.weight.copy_(torch.from_numpy(four_bit[n] if bits == 4 else _int8(fp32[n]) if bits == 8 else fp32[n]))
                weights += fp32[n].size if bits == 4 else 0
                block = (recipe.get(n) or {}).get("block") or INT4_BLOCK
                total += _bytes(fp32[n].shape, bits, block) if bits and not n.startswith("text.") else 0
        return weights, total

    problems = {seed: _problem(export, seed) for seed in seeds}

    def gradient(seed: int) -> np.ndarray:
        return placeholder_gradient(text, graph, *problems[seed])

    load(lambda n: 0)  # the reference: every weight fp32
    exact = {seed: gradient(seed) for seed in seeds}
    rows = []
    for name, widths in variants({n: r["bits"] for n, r in recipe.items()}):
        weights, total = load(widths)
        rows.append({"variant": name, "four_bit_weights": weights, "unet_bytes": total,
                     "cosine": {seed: _cosine(gradient(seed), exact[seed]) for seed in seeds}})
        print(f"  {name}: " + ", ".join(f"seed {s} {c:.4f}" for s, c in rows[-1]["cosine"].items()),
              file=sys.stderr, flush=True)
    return rows


def _problem(export: Path, seed: int) -> tuple:
    """fd_fidelity.py's problem for ``seed``: (token rows as a tensor, placeholder mask, v0, x_t, t, target)."""
    import torch

    model = ExportedModel.load(export, RuntimeOptions(threads=torch.get_num_threads()))
    placeholder, ids, v0, x_t, t, target, _ = fixed_problem(model, PHOTOS, seed, 2)
    loss = DenoisingLoss(model, placeholder, batched=True)
    return torch.from_numpy(loss.text_inputs(ids, v0[None])), ids == placeholder, v0, x_t, t, target


def variants(own: dict[str, int]) -> list[tuple[str, Callable[[str], int]]]:
    """(name, width per layer) of each row: W8A32, the export's widths ``own``, and ``own`` with each group
    of :data:`GROUPS` switched (to int8, or to 4-bit where the export keeps the whole group int8)."""
    rows: list[tuple[str, Callable[[str], int]]] = [("W8A32 (every layer int8)", lambda n: 8),
                                                     ("the export's own widths", lambda n: own.get(n, 8))]
    for group in GROUPS:
        members = [n for n in own if group_of(n) == group]
        if members:
            to = 4 if all(own[n] == 8 for n in members) else 8
            rows.append((f"{group}: {'4-bit' if to == 4 else 'int8'}",
                         lambda n, g=group, to=to: to if group_of(n) == g else own.get(n, 8)))
    return rows


def group_of(name: str) -> str | None:
    """The first group of :data:`GROUPS` that claims the module ``name``."""
    return next((group for group, claims in GROUPS.items() if claims(name)), None)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@script_main("--json was not written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/int4_gradient.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the diffusers folder the export was made from")
    parser.add_argument("export", type=Path, help="a --recipe w4a32 export of it")
    parser.add_argument("--seeds", default=f"7,{SEED}", help="problems (noise draws), comma-separated")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    try:
        args = parser.parse_args(argv)
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
        if not seeds or min(seeds) < 0:
            parser.error("--seeds takes integers >= 0")
        if not (args.source / "model_index.json").is_file():
            raise ZoodipError(f"{args.source} is not a diffusers folder (no model_index.json): give the export's source")
        if args.json is not None:  # (a folder as --json was a traceback after the whole measurement)
            check_output_file(args.json, "--json")
        try:
            rows = measure(args.source, args.export, seeds)
        except ValueError as error:
            raise ZoodipError(str(error)) from None
    except ZoodipError as exc:
        return print_error(exc)
    print(f"{args.export.name}: cos(g_q, g) of the placeholder's gradient, fp32 source {args.source.name}\n")
    print("| UNet widths | 4-bit weights | UNet weight bytes | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|---|" + "---|" * len(seeds))
    for row in rows:
        print(f"| {row['variant']} | {row['four_bit_weights'] / 1e6:.1f} M | {row['unet_bytes'] / 1e6:.1f} MB | "
              + " | ".join(f"{row['cosine'][s]:.4f}" for s in seeds) + " |")
    if args.json:  # (whole: a Ctrl-C or a full disk in the middle left a torn file)
        write_file(args.json, json.dumps({"source": args.source.name, "export": args.export.name, "rows": rows},
                                         indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
