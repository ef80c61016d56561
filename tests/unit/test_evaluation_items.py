"""A run's evaluation set (zoodip.step_inputs.evaluation_items): fixed, spread over the run's timesteps."""
from __future__ import annotations

import numpy as np

from zoodip.step_inputs import evaluation_items


class _Schedule:
    def add_noise(self, x0, noise, t):
        return x0 + noise * t[:, None, None, None]

    def target(self, x0, noise, t):
        return noise


def test_the_evaluation_set_is_fixed_and_spread_over_the_timesteps() -> None:
    latents = np.random.default_rng(0).standard_normal((2, 2, 4, 3, 3)).astype(np.float32)  # 2 photos, 2 views
    tokenizer = lambda prompt: np.array([[len(prompt)]])  # noqa: E731

    def items(seed: int):
        return evaluation_items(latents, ["a", "bb"], tokenizer, _Schedule(), (100, 901), 3, seed)

    first, again, other = items(1), items(1), items(2)
    assert [(int(ids[0]), t) for ids, t, _, _ in first] == [(1, 300), (1, 500), (1, 700), (2, 300), (2, 500), (2, 700)]
    for (_, _, x_t, target), (_, _, x_t2, target2) in zip(first, again):
        assert np.array_equal(x_t, x_t2) and np.array_equal(target, target2)  # the same at every evaluation
    assert not np.array_equal(first[0][3], other[0][3])  # the seed's noises
    _, t, x_t, noise = first[0]
    assert np.allclose(x_t, latents[0, 0] + noise * t) and x_t.dtype == np.float32  # the first view: the photo
    assert [t for _, t, _, _ in evaluation_items(latents, ["a", "b"], tokenizer, _Schedule(), (0, 1000), 1, 0)] == [500] * 2
