"""The SD-width reference model: a text encoder really 768 wide (SD1.5's width), not an isometric copy.

``widen_text.py`` embeds the 64-wide reference model exactly into 768 dimensions: real tokens then span
63 of the 768 directions and the others act only through LayerNorm statistics, a low-dimensional
shortcut that SD1.5 does not offer. This module makes the width real, then keeps training:

1. ``start``: the isometric copy, *filled*: every caption token's row gets a random component in the
   704 directions outside the copy's span (as large as its trained part), the rows no caption uses
   become seeded isotropic random rows (a trained CLIP table fills its space), and every linear layer
   that reads the text stream (q/k/v, fc1, the UNet's cross-attention keys and values) or writes it
   (out_proj, fc2) gets a random part acting in those directions. The model is then no longer exact,
   and every direction of the embedding space moves its output.
2. ``train_reference.py --init-from <start>``: the UNet and the 768-wide text encoder keep training on
   the world (its continuation keeps the starting folder's architecture and untrained rows), until the
   model generates as well as the 64-wide one.
3. ``pack``: the committed form (``reference/model-768/``): the folder with the token table cut down to
   the rows training touched; ``materialize`` regenerates the untrained rows from their seed and writes
   the full diffusers folder (NumPy + safetensors, no torch), which exports like any SD folder.

    python reference/sd_width.py start --out .cache/sd-width-start
    python reference/train_reference.py --init-from .cache/sd-width-start --work reference/.work-768 \\
        --out .cache/sd-width-trained --diffusion-steps 1200 --batch 32 --lr 3e-4 --warmup 100 \\
        --loss-weighting uniform --threads 2 --checkpoint-every 100 --freeze-text-encoder
    python reference/sd_width.py pack .cache/sd-width-trained reference/model-768 --start .cache/sd-width-start --overwrite
    python reference/sd_width.py materialize reference/model-768 .cache/reference-768   # what demo and quality.py do
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO, check_new_output, repo_relative, write_folder_beside  # noqa: E402

PACKED = REPO / "reference" / "model-768"
TABLE_KEY = "text_model.embeddings.token_embedding.weight"
PACK_FILE = "token_rows.safetensors"  # ids and rows of the trained tokens
PACK_RECORD = "untrained_rows.json"   # how the other rows are regenerated
READS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1")
WRITES = ("self_attn.out_proj", "mlp.fc2")


def untrained_rows(vocab_size: int, width: int, seed: int, std: float) -> np.ndarray:
    """The rows no caption trains: seeded isotropic Gaussian rows, fp16 as stored (exactly reproducible)."""
    rng = np.random.default_rng([seed, 768_768])
    return (rng.standard_normal((vocab_size, width), dtype=np.float32) * np.float32(std)).astype(np.float16)


def _complement_noise(rng: np.random.Generator, shape: tuple[int, int], basis: np.ndarray, side: str) -> np.ndarray:
    """A random matrix acting only outside span(basis): ``R (I - Q Q^T)`` (side "read") or ``(I - Q Q^T) R``."""
    raw = rng.standard_normal(shape)
    if side == "read":
        return raw - (raw @ basis) @ basis.T
    return raw - basis @ (basis.T @ raw)


def fill(text: dict, unet: dict, basis: np.ndarray, trained_ids: np.ndarray, seed: int,
         row_ratio: float = 1.0, weight_ratio: float = 0.5) -> dict:
    """Step 1 in place on float64 NumPy states: random components outside the isometric span ``basis``.

    ``row_ratio``: norm of a trained row's new component relative to its trained part; ``weight_ratio``:
    Frobenius norm of each layer's new part relative to the layer's weight. Returns the record that
    ``materialize`` needs to regenerate the untrained rows."""
    rng = np.random.default_rng([seed, 15])
    table = text[TABLE_KEY]
    rows = table[trained_ids]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    noise = _complement_noise(rng, rows.shape, basis, "read")
    rows = rows + row_ratio * norms * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    std = float(np.sqrt(np.mean(np.sum(rows ** 2, axis=1)) / table.shape[1]))
    table[:] = untrained_rows(table.shape[0], table.shape[1], seed, std)
    table[trained_ids] = rows

    def perturb(state: dict, key: str, side: str) -> None:
        w = state[key]
        r = _complement_noise(rng, w.shape, basis, side)
        state[key] = w + weight_ratio * np.linalg.norm(w) / np.linalg.norm(r) * r

    layers = sorted({int(k.split(".")[3]) for k in text if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        for name in READS:
            perturb(text, f"text_model.encoder.layers.{i}.{name}.weight", "read")
        for name in WRITES:
            perturb(text, f"text_model.encoder.layers.{i}.{name}.weight", "write")
    for key in sorted(unet):
        if ".attn2.to_k." in key or ".attn2.to_v." in key:
            perturb(unet, key, "read")
    return {"seed": seed, "std": std, "vocab_size": int(table.shape[0]), "width": int(table.shape[1])}


def start(src: Path, dest: Path, width: int = 768, seed: int = 0) -> dict:
    """The isometric copy of ``src`` (``widen_text.widen``), filled (step 1), written to ``dest``."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from reference.train_reference import Captioner
    from reference.widen_text import embedding_basis, widen

    report = widen(src, dest, width, seed)
    narrow = report["narrow_width"]
    basis = embedding_basis(narrow, width, seed).numpy()
    text_model = CLIPTextModel.from_pretrained(dest / "text_encoder").float()
    unet_model = UNet2DConditionModel.from_pretrained(dest / "unet").float()
    text = {k: v.double().numpy().copy() for k, v in text_model.state_dict().items() if v.is_floating_point()}
    unet = {k: v.double().numpy().copy() for k, v in unet_model.state_dict().items()}
    trained = Captioner(src / "tokenizer").vocab
    record = fill(text, unet, basis, trained, seed)
    text_model.load_state_dict({k: torch.from_numpy(v).float() for k, v in text.items()}, strict=False)
    unet_model.load_state_dict({k: torch.from_numpy(v).float() for k, v in unet.items()})
    text_model.save_pretrained(dest / "text_encoder", safe_serialization=True)
    unet_model.save_pretrained(dest / "unet", safe_serialization=True)
    (dest / "widened.json").unlink()
    record = {**record, "built_from": repo_relative(src), "isometric_width": narrow, "row_ratio": 1.0,
              "weight_ratio": 0.5, "trained_ids": trained.tolist()}
    (dest / "sd_width_start.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def pack(trained: Path, dest: Path, start_folder: Path) -> dict:
    """Step 3: ``trained`` (a full diffusers folder) -> the committed form without the untrained rows."""
    from safetensors.numpy import load_file, save_file
    from zoodip.errors import ZoodipError

    record = json.loads((start_folder / "sd_width_start.json").read_text())
    ids = np.asarray(record["trained_ids"], np.int64)
    keep = {k: record[k] for k in ("seed", "std", "vocab_size", "width")}

    def write(folder: Path) -> None:
        shutil.copytree(trained, folder)
        weights = folder / "text_encoder" / "model.safetensors"
        tensors = load_file(weights)
        table = tensors.pop(TABLE_KEY)
        regenerated = untrained_rows(record["vocab_size"], record["width"], record["seed"], record["std"])
        untouched = np.setdiff1d(np.arange(len(table)), ids)
        if not np.array_equal(table[untouched], regenerated[untouched]):
            raise ZoodipError(f"{trained}: its untrained token rows are not the seeded ones of {start_folder}: pack the "
                              f"folder trained from that start, or give the --start it was trained from")
        save_file(tensors, str(weights))
        save_file({"ids": ids, "rows": table[ids]}, str(folder / "text_encoder" / PACK_FILE))
        (folder / "text_encoder" / PACK_RECORD).write_text(json.dumps(keep, indent=1) + "\n")

    write_folder_beside(dest, write)  # a link's target replaced, as materialize's
    return keep


def materialize(packed: Path = PACKED, dest: Path | None = None) -> Path:
    """The full diffusers folder of a packed model (cached: rebuilt only when the packed files change)."""
    from safetensors.numpy import load_file, save_file

    dest = Path(dest or REPO / ".cache" / "reference-768").resolve()  # a link: its target replaced; '.': named
    stamp = hashlib.sha256()
    for path in sorted(p for p in packed.rglob("*") if p.is_file()):
        stamp.update(str(path.relative_to(packed)).encode() + path.read_bytes())
    marker = dest / ".materialized-from"
    if marker.is_file() and marker.read_text() == stamp.hexdigest():
        return dest

    def write(folder: Path) -> None:
        shutil.copytree(packed, folder, ignore=shutil.ignore_patterns(PACK_FILE, PACK_RECORD))
        record = json.loads((packed / "text_encoder" / PACK_RECORD).read_text())
        rows = load_file(packed / "text_encoder" / PACK_FILE)
        table = untrained_rows(record["vocab_size"], record["width"], record["seed"], record["std"])
        table[rows["ids"]] = rows["rows"]
        weights = folder / "text_encoder" / "model.safetensors"
        tensors = load_file(weights)
        tensors[TABLE_KEY] = table
        save_file(tensors, str(weights))
        (folder / ".materialized-from").write_text(stamp.hexdigest())

    return write_folder_beside(dest, write)


def check_outputs(args) -> None:
    """The folder a command replaces, before any work: never one it reads, and an existing one only with --overwrite
    (``pack X reference/model`` deleted the 64-wide model), but for a cache ``materialize`` wrote itself."""
    if args.command == "start":
        check_new_output(args.out, "--out", args.overwrite, sources=[args.src])
    elif args.command == "pack":
        check_new_output(args.dest, "DEST", args.overwrite, sources=[args.trained, args.start])
    elif args.dest is not None:
        ours = (args.dest / ".materialized-from").is_file()
        check_new_output(args.dest, "DEST", args.overwrite or ours, sources=[args.packed])


def main(argv: list[str] | None = None) -> int:
    """The folder tools' command line: a Ctrl-C is one line saying what is kept, exit status 130 (zoodip imported here, as in _main)."""
    from zoodip.console import script_main

    return script_main("(pack and materialize leave DEST as it was; start's --out is whole only once it holds sd_width_start.json: run start again with --overwrite)")(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    from zoodip.console import OneLineParser, print_error  # one line for a bad flag, subcommands' too
    from zoodip.errors import ZoodipError

    p = OneLineParser(prog="python reference/sd_width.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="the filled isometric copy of the 64-wide reference model")
    s.add_argument("--src", type=Path, default=REPO / "reference" / "model")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("pack", help="a trained folder -> the committed form")
    k.add_argument("trained", type=Path)
    k.add_argument("dest", type=Path)
    k.add_argument("--start", type=Path, required=True, help="the folder `start` wrote")
    m = sub.add_parser("materialize", help="the committed form -> a full diffusers folder")
    m.add_argument("packed", type=Path, nargs="?", default=PACKED)
    m.add_argument("dest", type=Path, nargs="?")
    for command in (s, k, m):
        command.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    try:
        args = p.parse_args(argv)
        needed = {"start": lambda: [args.src / "model_index.json"],
                  "pack": lambda: [args.trained / "model_index.json", args.start / "sd_width_start.json"],
                  "materialize": lambda: [args.packed / "text_encoder" / PACK_RECORD]}[args.command]()
        missing = [str(path) for path in needed if not path.is_file()]
        if missing:  # said now, in one line, rather than as a traceback halfway through
            raise ZoodipError(f"{args.command}: missing {', '.join(missing)}: check the folders given")
        check_outputs(args)
    except ZoodipError as exc:
        return print_error(exc)
    if args.command == "start":
        record = start(args.src, args.out, seed=args.seed)
        print(json.dumps({k: v for k, v in record.items() if k != "trained_ids"}))
    elif args.command == "pack":
        print(json.dumps(pack(args.trained, args.dest, args.start)))
    else:
        print(materialize(args.packed, args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
