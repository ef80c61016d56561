"""Convert a pickled textual-inversion embedding (.pt/.bin) to safetensors, on a desktop with torch.

    python tools/pt_embedding_to_safetensors.py IN.pt OUT.safetensors

The SDK never unpickles files (a pickle can run code). This converts the common layouts: diffusers'
``{token: tensor}``, A1111's ``{"string_to_param": {"*": tensor}, ...}`` and a bare tensor (written as A1111's
``emb_params``, whose trigger word is the file name). Loading uses ``weights_only=True``, so only tensors and plain
containers are accepted. A bad input is one line ``error: ...`` (exit 2); OUT is written whole or not at all, and
never over IN or an existing file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = "usage: python tools/pt_embedding_to_safetensors.py IN.pt OUT.safetensors"


class ConversionError(Exception):
    """A problem with the input or output, said in one line."""


def embedding_tensors(data: object, source: Path) -> dict:
    """The one embedding tensor of a loaded pickle, under the name its layout gives it."""
    import torch

    if torch.is_tensor(data):
        tensors = {"emb_params": data}
    elif isinstance(data, dict) and "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or not torch.is_tensor(params.get("*")):
            raise ConversionError(f"{source} has A1111's string_to_param without a '*' tensor: not an embedding")
        tensors = {"emb_params": params["*"]}
    elif isinstance(data, dict):
        tensors = {str(key): value for key, value in data.items() if torch.is_tensor(value)}
    else:
        raise ConversionError(f"{source} holds a {type(data).__name__}, not an embedding (a tensor, or a dict of one)")
    if len(tensors) != 1:
        raise ConversionError(f"{source} holds {len(tensors)} tensors ({', '.join(list(tensors)[:4])}): a "
                              "textual-inversion embedding holds one")
    (name, tensor), = tensors.items()
    if not tensor.is_floating_point() or tensor.dim() not in (1, 2) or 0 in tensor.shape:
        raise ConversionError(f"{source}'s tensor {name!r} is {tensor.dtype} of shape {tuple(tensor.shape)}: an "
                              "embedding is floats of shape [vectors, width] or [width]")
    return {name: tensor.float().contiguous()}


def convert(source: Path, target: Path) -> dict:
    """Write ``source``'s embedding to ``target`` (a new .safetensors file, written whole); returns its tensors."""
    import torch
    from safetensors.torch import save_file

    if not source.is_file():
        raise ConversionError(f"{source} is not a file: pass the .pt/.bin embedding to convert")
    if target.suffix.lower() != ".safetensors" or target.is_dir():
        raise ConversionError(f"{target}: name the output NAME.safetensors")
    if target.exists():
        raise ConversionError(f"{target} exists (it is {'the input' if target.resolve() == source.resolve() else 'a file'}"
                              "): choose another name")
    if not target.parent.is_dir():
        raise ConversionError(f"{target.parent} is not a folder: create it first")
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for what is not a safe pickle of tensors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"cannot read {source} as a torch embedding ({reason[:200]})") from None
    tensors = embedding_tensors(data, source)
    temp = target.with_name(f".{target.name}.partial")
    try:
        save_file(tensors, str(temp))
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return tensors


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"error: {USAGE}", file=sys.stderr)
        return 2
    try:
        tensors = convert(Path(argv[0]), Path(argv[1]))
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {argv[1]} ({', '.join(f'{k}: {tuple(v.shape)}' for k, v in tensors.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
