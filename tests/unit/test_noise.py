"""The initial noise (zoodip.noise): A1111's variation seeds mixed in by spherical interpolation."""
import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.noise import check_variation, seed_noise, slerp


def _draws(seed: int, shape=(3, 4, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_the_ends_are_the_two_noises_and_the_middle_keeps_their_length():
    a, b = _draws(0), _draws(1)
    assert np.array_equal(slerp(0.0, a, b), a) and np.array_equal(slerp(1.0, a, b), b)
    half = slerp(0.5, a, b)
    lengths = np.linalg.norm(half.reshape(3, -1), axis=1) / np.linalg.norm(a.reshape(3, -1), axis=1)
    assert np.all(np.abs(lengths - 1) < 0.1)  # the straight line's midpoint would be about 0.71 as long
    straight = np.linalg.norm((0.5 * (a + b)).reshape(3, -1), axis=1) / np.linalg.norm(a.reshape(3, -1), axis=1)
    assert np.all(straight < 0.8)


def test_each_image_is_mixed_on_its_own_and_parallel_noise_on_the_straight_line():
    a, b = _draws(0), _draws(1)
    mixed = slerp(0.3, a, b)
    for i in range(3):
        np.testing.assert_allclose(mixed[i : i + 1], slerp(0.3, a[i : i + 1], b[i : i + 1]), rtol=1e-6)
    np.testing.assert_allclose(slerp(0.25, a, 2 * a), 1.25 * a, rtol=1e-5)  # no 0/0 where the angle is 0
    assert mixed.dtype == np.float32 and mixed.shape == a.shape


def test_the_variation_changes_the_noise_only_and_strength_zero_changes_nothing():
    shape = (2, 4, 8, 8)
    plain, rng = seed_noise(7, shape)
    varied, varied_rng = seed_noise(7, shape, variation_seed=9, variation_strength=0.2)
    assert not np.array_equal(plain, varied)
    assert rng.random() == varied_rng.random()  # the seed's generator goes on as without a variation
    assert np.array_equal(seed_noise(7, shape, 9, 0.0)[0], plain)
    assert np.array_equal(seed_noise(7, shape, 9, 1.0)[0], seed_noise(9, shape)[0])


@pytest.mark.parametrize("seed, strength, latents, words", [
    (None, 0.3, None, "give it with variation_seed"),
    (5, 0.0, None, "changes nothing without a variation strength"),
    (5, 1.5, None, "from 0 to 1"),
    (5, float("nan"), None, "from 0 to 1"),
    (5, "0.3", None, "from 0 to 1"),
    (-1, 0.3, None, "non-negative integer"),
    (2.0, 0.3, None, "non-negative integer"),
    (5, 0.3, np.zeros(1), "they are the noise already"),
])
def test_settings_that_cannot_mean_a_variation_are_refused_in_one_line(seed, strength, latents, words):
    with pytest.raises(ZoodipError, match=words) as caught:
        check_variation(seed, strength, latents)
    assert "\n" not in str(caught.value)
    check_variation(None, 0.0)  # no variation: nothing to check


@pytest.mark.parametrize("s, a, b, words", [
    (float("nan"), _draws(0), _draws(1), "s must be a number from 0 to 1"),
    (1.5, _draws(0), _draws(1), "s must be a number from 0 to 1"),
    (0.5, _draws(0), _draws(1)[:1], "two float arrays of one shape"),
    (0.5, np.zeros((1, 4), np.int64), np.ones((1, 4), np.int64), "two float arrays of one shape"),
    (0.5, np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32), "a zero or non-finite one has no direction"),
])
def test_slerp_refuses_what_has_no_direction_to_mix(s, a, b, words):
    with pytest.raises(ZoodipError, match=words):
        slerp(s, a, b)


def test_none_is_no_variation_and_a_variation_seed_equal_to_the_seed_is_warned_of():
    check_variation(None, None)
    np.testing.assert_allclose(slerp(0.5, [[1.0, 0.0]], [[0.0, 1.0]]), [[0.5**0.5, 0.5**0.5]])  # lists are arrays
    with pytest.warns(UserWarning, match="the variation seed is the seed itself"):
        check_variation(7, 0.3, seed=7)
