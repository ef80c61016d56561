"""A random LoRA in kohya's layout (A1111's) for a diffusers SD folder, so that what ``zoodip export --lora`` costs on a
model's real shapes can be measured without a downloaded LoRA (random values: time, memory and disk only).

    python benchmarks/random_lora.py                 # SD1.5's architecture (memory.py's cached random folder)
    python benchmarks/random_lora.py --source DIR --out lora.safetensors --rank 16 --alpha 8

Factors of rank ``--rank`` (float16, as LoRAs are shared) on every attention projection of the UNet (``to_q``,
``to_k``, ``to_v``, ``to_out.0``, ``proj_in``, ``proj_out``) and of the text encoder (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``): the layers a typical character or style LoRA trains.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

from benchmarks._quality_backprop import TORCH_SEED_LIMIT  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.paths import atomic_write_bytes, check_output_file  # noqa: E402
from zoodip.validation import finite_float, positive_int  # noqa: E402

DEFAULT_SOURCE = REPO / ".cache" / "bench" / "sd15-random-s0"  # benchmarks/memory.py builds it
TARGETS = ("to_q", "to_k", "to_v", "proj_in", "proj_out", "q_proj", "k_proj", "v_proj", "out_proj")
FLOAT16_MAX = 65504.0  # the file stores alpha in float16: a larger one would be read back as inf
FLOAT16_ZERO = 2.0 ** -25  # and an alpha up to this one as 0 (a LoRA that changes nothing)


def random_lora(source: Path, out: Path, rank: int, alpha: float, seed: int) -> int:
    """Write the LoRA; returns its number of layers."""
    import torch
    from safetensors.torch import save
    from transformers.utils import logging as transformers_logging

    from zoodip_export.onnx_export import load_text_encoder, load_unet

    transformers_logging.set_verbosity_error()  # its loader's deprecation notes say nothing about this file

    generator, tensors = torch.Generator().manual_seed(seed), {}
    for prefix, model in (("lora_unet_", load_unet(source / "unet")), ("lora_te_", load_text_encoder(source / "text_encoder"))):
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] not in TARGETS and not name.endswith("to_out.0"):
                continue
            shape, key = module.weight.shape, prefix + name.replace(".", "_")
            if rank > min(shape[:2]):  # checked before any factor is drawn: a huge rank would fill memory first
                raise ZoodipError(f"--rank {rank} is above {source.name}'s layer {name} ({shape[1]} -> {shape[0]}): "
                                  f"give a rank of at most {min(shape[:2])}")
            kernel = [1, 1] if len(shape) == 4 else []
            tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, shape[1], *kernel, generator=generator) * 0.01).half()
            tensors[f"{key}.lora_up.weight"] = (torch.randn(shape[0], rank, *kernel, generator=generator) * 0.01).half()
            tensors[f"{key}.alpha"] = torch.tensor(alpha).half()
    # whole or not at all: a Ctrl-C or a full disk during the write leaves no truncated LoRA under --out
    atomic_write_bytes(out, lambda handle: handle.write(save(tensors)), then="run again")
    return len(tensors) // 3


@script_main("--out was not written (an earlier file there is kept as it was)")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/random_lora.py", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="a diffusers SD folder (default: memory.py's "
                                                                             "SD1.5-architecture one)")
    parser.add_argument("--out", type=Path, default=Path("random_lora.safetensors"), help="the LoRA file to write")
    parser.add_argument("--rank", type=int, default=16, help="the factors' rank")
    parser.add_argument("--alpha", type=float, default=8.0, help="kohya's alpha (the update is scaled by alpha / rank)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random factors")
    try:
        args = parser.parse_args(argv)
        positive_int("--rank", args.rank)
        finite_float("--alpha", args.alpha, low=FLOAT16_ZERO, high=FLOAT16_MAX)
        if positive_int("--seed", args.seed, 0) >= TORCH_SEED_LIMIT:
            raise ZoodipError(f"--seed must be an integer below 2**64, got {args.seed}")
        if not (args.source / "unet").is_dir() or not (args.source / "text_encoder").is_dir():
            raise ZoodipError(f"--source {args.source} is not a diffusers SD folder (unet/ and text_encoder/): run "
                              "'python benchmarks/memory.py --quick' to build the SD1.5-architecture one, or pass one")
        check_output_file(args.out, "--out", (".safetensors",))
        layers = random_lora(args.source, args.out, args.rank, args.alpha, args.seed)
    except ZoodipError as exc:
        return print_error(exc)
    print(f"{args.out}: {layers} layers, rank {args.rank}, alpha {args.alpha:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
