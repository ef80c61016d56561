"""The settings a ``train_reference.py`` --work folder's checkpoints were made with, so that a rerun with other
flags is refused instead of silently continuing a run of other settings (another --batch's optimizer state, another
--n-images' latents)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from zoodip.errors import ZoodipError

RECORD = "settings.json"
# The flags (argparse dests) that shape each stage's output: the work's files of a stage continue only under the same.
# (Not --out, --threads, --device, --checkpoint-every, --stop-after: where and how fast, not what is trained.)
STAGE_FLAGS = {
    "data": ("n_images", "seed"),
    "vae": ("n_images", "seed", "vae_steps", "vae_batch", "vae_lr", "kl_weight"),
    "diffusion": ("n_images", "seed", "diffusion_steps", "batch", "lr", "warmup", "loss_weighting", "init_from",
                  "vae_from", "freeze_text_encoder", "ema", "caption_attributes"),
}


def stage_settings(args: argparse.Namespace, stage: str) -> dict:
    """The settings of ``stage`` in ``args``, as JSON values (a folder by its full path, the caption attributes as
    the set they name)."""
    settings = {}
    for dest in STAGE_FLAGS[stage]:
        value = getattr(args, dest)
        if isinstance(value, Path):
            value = str(value.resolve())
        elif dest == "caption_attributes":
            value = ",".join(sorted(value.split(",")))
        settings[dest] = value
    return settings


def _spelled(dest: str, value: object) -> str:
    flag = "--" + dest.replace("_", "-")
    if value is None or value is False:
        return f"without {flag}"
    return f"with {flag}" if value is True else f"with {flag} {value}"


def check_work(args: argparse.Namespace) -> None:
    """Refuse, in one line, a --work whose recorded stages were made with other settings than ``args``'."""
    try:
        recorded = json.loads((args.work / RECORD).read_text())
    except (OSError, ValueError):  # a new --work (or one from before the record: nothing to compare)
        return
    for stage, settings in recorded.items():
        if stage not in STAGE_FLAGS:
            continue
        ours = stage_settings(args, stage)
        for dest, value in settings.items():
            if dest in ours and ours[dest] != value:
                raise ZoodipError(f"--work {args.work} holds a {stage} checkpoint made {_spelled(dest, value)} (this "
                                  f"run: {_spelled(dest, ours[dest]).removeprefix('with ')}): use another --work or the same flags")


def record_stage(args: argparse.Namespace, stage: str) -> None:
    """Record ``stage``'s settings in --work before the stage writes anything there (kept once recorded)."""
    path = args.work / RECORD
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    if stage in recorded:
        return
    recorded[stage] = stage_settings(args, stage)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(recorded, indent=1) + "\n")
    os.replace(tmp, path)


__all__ = ["RECORD", "STAGE_FLAGS", "check_work", "record_stage", "stage_settings"]
