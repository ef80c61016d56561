"""The run folder: the files a run keeps there, and what a fresh run or a resume needs to find in it.

``check_run_folder`` runs before the model loads (``personalize``), so that a folder that cannot take the run is
refused at once, not after the model, the photos and the search space are ready; the run checks it again when it
takes the folder (``Personalizer``, under the folder's lock).
"""
from __future__ import annotations

import re

from .checkpoint import CHECKPOINT_NAME, check_checkpoint_file
from .config import PersonalizeConfig
from .embeddings import a1111_file_name
from .errors import ZoodipError
from .paths import check_files_to_replace

EMBEDDING_NAME = "learned_embeds.safetensors"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"  # the run's settings, as its first step found them
RUN_FILES = (CHECKPOINT_NAME, EMBEDDING_NAME, LOG_NAME)  # written atomically: their temp files are cleaned
# diffusers' textual_inversion.py names its --save_steps snapshots so; a cancelled run writes one too.
SNAPSHOT_NAME = "learned_embeds-steps-{step}.safetensors"
SNAPSHOT_TEMP = re.compile(r"^\.(learned_embeds-steps-\d+\.safetensors)\.")


def check_run_folder(config: PersonalizeConfig, resume: bool) -> None:
    """A resume needs the folder's checkpoint and refuses a folder (or device) where its embedding files go; a
    fresh run refuses a folder holding a run (it would be lost) or an embedding it would replace."""
    out = config.output_dir
    if resume:
        check_checkpoint_file(out / CHECKPOINT_NAME)
        check_files_to_replace([out / EMBEDDING_NAME,
                                *([out / a1111_file_name(config.placeholder_token)] if config.a1111 else [])],
                               "resume with --resume")
    elif (out / CHECKPOINT_NAME).exists() or (out / EMBEDDING_NAME).exists():  # a run's, or another tool's file
        held = ("a run: pass --resume to continue it," if (out / CHECKPOINT_NAME).exists() else
                f"{EMBEDDING_NAME}, which a fresh run would replace: move it,")
        raise ZoodipError(f"{out} already holds {held} or choose a new --output_dir")
