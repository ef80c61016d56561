"""Behaviour pinned: fixed-seed runs on the tiny export end in the same embedding bytes as before a refactor.

The hashes were computed on the code before issue 19's restructuring (draws of a step's inputs in one
function, methods composed by constructor arguments); a change that moves code without changing what
it computes keeps them. They pin this platform's arithmetic (x86-64 onnxruntime and NumPy): a change of
those libraries' versions may change them too, which is then no bug of zoodip's.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from zoodip.embeddings import load_embedding_file
from zoodip.trainer import PersonalizeConfig, personalize

PINNED = {
    "default": "73c8d3a9463b52c3be8db9f4211db994117bbc81764ee8ca44751b707c7bfd63",
    "flip": "c436c2c2bf76a174438de51a1b2c9bba1f0a9705f080c0b3c50c267d3addced9",
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_fixed_seed_run_gives_the_pinned_embedding_bytes(tiny_export, photos, tmp_path, case):
    config = PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path / "run",
                               placeholder_token="<striped-star>", initializer_token="star", max_train_steps=6,
                               seed=3, eval_every=0, checkpoint_every=0, threads=1, flip=case == "flip")
    result = personalize(config)
    _, vectors = load_embedding_file(result.embedding_path)
    digest = hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()
    assert digest == PINNED[case]
