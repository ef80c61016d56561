"""Behaviour pinned: fixed-seed runs on the tiny export end in the same embedding as before a refactor.

The values were computed on the code before issue 19's restructuring (draws of a step's inputs in one
function, methods composed by constructor arguments); a change that moves code without changing what it
computes keeps them. Two checks:

* the values, on any platform, to ``ATOL``: a changed computation (another draw, another formula) moves the
  embedding by about one Adam step (lr 1e-2; the two cases below differ by 0.03-0.05), arithmetic by far less;
* the bytes, which a CPU's arithmetic sets (AVX-512 or not, torch's and onnxruntime's kernels) and a 6-step
  run amplifies (Adam divides by small first second moments: a 1e-7 relative change of the curvature basis
  moves the embedding by about 6e-5). Bytes recorded on no platform like this one are reported as a warning,
  with their digest, not as a failure: which platform a digest belongs to is not known in advance.
"""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

from zoodip.embeddings import load_embedding_file
from zoodip.trainer import PersonalizeConfig, personalize

# sha256 of the float32 embedding, per case, on each platform it was recorded on (the first on the CI machine
# of 2026-11, the second on a 2-core AMD EPYC without AVX-512, 2026-12-02, the third on a 2-core Intel Xeon VM,
# reported by this test's warning in every session of 2026-12-03 to 12-05).
PINNED_BYTES = {
    "default": {"73c8d3a9463b52c3be8db9f4211db994117bbc81764ee8ca44751b707c7bfd63",
                "13b0ba83e9363035f4f2ed26970708c0afbdc20790bd239772e88489ef6c614d",
                "7cde3b10588002b599713fce33ee150d6ff7fef9106579c27709258d31bb099b"},
    "flip": {"c436c2c2bf76a174438de51a1b2c9bba1f0a9705f080c0b3c50c267d3addced9",
             "b8627c1778b4aef9f84c26f09d3766e6de86b975cdbb0e320bfd61d8b6158f7f",
             "4989a40fd49e38b447266ac22fe467603cbda917572c982e4da3f2914ec73ac8"},
}
PINNED_VALUES = {  # the same runs' embeddings, as recorded on the second platform
    "default": [
        -0.02775116264820099, 0.04520813375711441, 0.03552255779504776, -0.08675345033407211, -0.08279696106910706,
        -0.09121391177177429, -0.19187498092651367, 0.1193900927901268, -0.014996691606938839, -0.013729291968047619,
        0.0292457714676857, 0.16747617721557617, -0.161251962184906, 0.020149311050772667, -0.10526315122842789,
        -0.03017416037619114, -0.08968260884284973, -0.10540252923965454, -0.13034462928771973, 0.08270833641290665,
        0.034748345613479614, 0.013822787441313267, 0.0809255987405777, -0.010895988903939724, -0.061219748109579086,
        -0.05629769340157509, -0.016307488083839417, 0.21540269255638123, -0.15337319672107697, -0.08250849694013596,
        -0.16171103715896606, 0.05115850642323494,
    ],
    "flip": [
        -0.04989071190357208, 0.030568327754735947, 0.030869994312524796, -0.11389151960611343, -0.10606814175844193,
        -0.06855373084545135, -0.17889748513698578, 0.08228356391191483, 0.022821633145213127, 0.013036350719630718,
        0.034396037459373474, 0.18534345924854279, -0.1166616901755333, -0.0014005209086462855, -0.09164804220199585,
        -0.07905525714159012, -0.07936231791973114, -0.1344277411699295, -0.17242760956287384, 0.08013473451137543,
        0.020665396004915237, 0.03262590244412422, 0.09377708286046982, -0.012889002449810505, -0.09430458396673203,
        -0.008747153915464878, 0.037321288138628006, 0.19880007207393646, -0.15448933839797974, -0.05003641918301582,
        -0.1777251660823822, 0.0382230281829834,
    ],
}
ATOL = 1e-3


@pytest.mark.parametrize("case", sorted(PINNED_VALUES))
def test_fixed_seed_run_gives_the_pinned_embedding(tiny_export, photos, tmp_path, case):
    config = PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path / "run",
                               placeholder_token="<striped-star>", initializer_token="star", max_train_steps=6,
                               seed=3, eval_every=0, checkpoint_every=0, threads=1, flip=case == "flip")
    result = personalize(config)
    _, vectors = load_embedding_file(result.embedding_path)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    digest = hashlib.sha256(vectors.tobytes()).hexdigest()
    np.testing.assert_allclose(vectors.ravel(), np.float32(PINNED_VALUES[case]), rtol=0, atol=ATOL)
    if digest not in PINNED_BYTES[case]:
        warnings.warn(f"pinned run {case!r}: values within {ATOL}, bytes new to this platform (sha256 {digest})")
