"""How much of a UNet forward does not depend on the text: the share a step's candidates could compute once.

    python benchmarks/text_free_prefix.py                         # SD1.5's UNet at 512 and 256 px
    python benchmarks/text_free_prefix.py --resolutions 768 --model PATH/TO/DIFFUSERS_FOLDER

A forward-only step evaluates n + 1 candidate embeddings on the same noisy latent and timestep (issue 16's
"reuse of the part of the UNet that does not depend on the text"). Everything the UNet runs before its first
cross-attention reads (time embedding, ``conv_in``, the first ResNet block, the first self-attention) is the
same for every candidate, and so is nothing after it: from the first cross-attention on, every activation
carries the text. Computing that prefix once per step instead of n + 1 times saves ``n / (n + 1)`` of its share.

Counts floating-point operations with ``torch.utils.flop_counter`` on the meta device (shapes only: no
weights are read and nothing is computed), for the architecture of ``--model``'s UNet or, by default,
SD1.5's. Prints a Markdown table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from zoodip.console import OneLineParser, print_error, script_main
from zoodip.errors import ZoodipError

DIRECTIONS = 2  # the SDK's default n: a step evaluates n + 1 candidates


class _ReachedText(Exception):
    """Raised by a hook when the forward pass reaches the first module that reads the text."""


def first_text_reader(unet: Any) -> Any:
    """The UNet's first cross-attention module in execution order (the first down block's first attn2)."""
    for block in unet.down_blocks:
        for attention in getattr(block, "attentions", None) or []:
            for name, module in attention.named_modules():
                if name.endswith("attn2"):
                    return module
    raise ZoodipError("the UNet has no cross-attention in its down blocks: nothing to split")


def count_flops(unet: Any, resolution: int, vae_scale_factor: int = 8) -> dict[str, float]:
    """FLOPs of one forward (batch 1) at ``resolution`` px: the whole UNet and the text-free prefix."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    side = resolution // vae_scale_factor
    inputs = (torch.zeros(1, unet.config.in_channels, side, side, device="meta"), torch.tensor([700.0], device="meta"),
              torch.zeros(1, 77, unet.config.cross_attention_dim, device="meta"))
    with FlopCounterMode(display=False) as counter:
        unet(*inputs)
    total = counter.get_total_flops()

    def stop(*_: Any, **__: Any) -> None:
        raise _ReachedText

    hook = first_text_reader(unet).register_forward_pre_hook(stop)
    try:
        with FlopCounterMode(display=False) as counter:
            try:
                unet(*inputs)
            except _ReachedText:
                pass
    finally:
        hook.remove()
    return {"total": float(total), "prefix": float(counter.get_total_flops())}


def load_unet(model: Path | None) -> tuple[Any, int]:
    """(the UNet's architecture on the meta device, the VAE's scale factor): ``model``'s, or SD1.5's."""
    import torch
    from diffusers import UNet2DConditionModel
    from zoodip_export.source_folder import read_json, vae_scale_factor  # read_json: one line for a bad file

    if model is None:
        from zoodip_export.sd15_configs import sd15_configs

        configs = sd15_configs()
        unet_config, vae_config = configs["unet"], configs["vae"]
    else:
        unet_config, vae_config = (read_json(Path(model) / part / "config.json") for part in ("unet", "vae"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    unet.set_default_attn_processor()  # plain attention: the export's arithmetic, counted op by op
    return unet, vae_scale_factor(vae_config)


@script_main("nothing was written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/text_free_prefix.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a diffusers SD folder (default: SD1.5's architecture)")
    parser.add_argument("--resolutions", default="512,256", help="comma-separated image sides in px")
    try:
        args = parser.parse_args(argv)
        try:
            resolutions = [int(r) for r in args.resolutions.split(",")]
        except ValueError:
            raise ZoodipError(f"--resolutions {args.resolutions!r}: give comma-separated integers, e.g. 512,256") from None
        unet, vae_scale_factor = load_unet(args.model)
        multiple = vae_scale_factor * 2 ** (len(unet.down_blocks) - 1)  # the latent halves at each level
        if any(r <= 0 or r % multiple for r in resolutions):
            raise ZoodipError(f"--resolutions {args.resolutions!r}: each must be a positive multiple of {multiple} "
                              "for this model")
    except ZoodipError as exc:
        return print_error(exc)
    saved = DIRECTIONS / (DIRECTIONS + 1)
    print(f"UNet: {args.model or 'SD1.5 architecture'}; one forward, batch 1; n = {DIRECTIONS} directions a step\n")
    print("| resolution | UNet forward | text-free prefix | its share | saved per step by computing it once |")
    print("|---|---|---|---|---|")
    for resolution in resolutions:
        flops = count_flops(unet, resolution, vae_scale_factor)
        share = flops["prefix"] / flops["total"]
        print(f"| {resolution} px | {flops['total'] / 1e9:.4g} GFLOP | {flops['prefix'] / 1e9:.4g} GFLOP | "
              f"{100 * share:.2f}% | {100 * share * saved:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
