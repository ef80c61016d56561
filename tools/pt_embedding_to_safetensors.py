"""Convert a pickled textual-inversion embedding (.pt/.bin) to safetensors, on a desktop with torch.

    python tools/pt_embedding_to_safetensors.py IN.pt OUT.safetensors

The SDK never unpickles files (a pickle can run code). This converts the two common layouts:
diffusers' ``{token: tensor}`` and A1111's ``{"string_to_param": {"*": tensor}, ...}``. Loading uses
``weights_only=True``, so only tensors and plain containers are accepted.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: pt_embedding_to_safetensors.py IN.pt OUT.safetensors", file=sys.stderr)
        return 2
    import torch
    from safetensors.torch import save_file

    data = torch.load(argv[0], map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "string_to_param" in data:
        data = {"emb_params": data["string_to_param"]["*"]}
    tensors = {key: value.float().contiguous() for key, value in data.items() if torch.is_tensor(value)}
    if not tensors:
        print(f"error: {argv[0]} holds no tensors in a known embedding layout", file=sys.stderr)
        return 2
    save_file(tensors, argv[1])
    print(f"wrote {argv[1]} ({', '.join(f'{k}: {tuple(v.shape)}' for k, v in tensors.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
