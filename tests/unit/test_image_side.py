"""The one image-side rule (zoodip.image_side) and the places that ask it."""
import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.image_side import check_side, side_multiple, side_problem


@pytest.mark.parametrize("factor, multiple", [(1, 8), (4, 8), (8, 8), (16, 16), (12, 24)])
def test_the_step_is_a_multiple_of_8_and_of_the_vae_factor(factor, multiple):
    assert side_multiple(factor) == multiple


@pytest.mark.parametrize("value", [512, 8, np.int64(256)])
def test_valid_sides_pass_as_ints(value):
    assert side_problem(value, 8) is None
    side = check_side("--resolution", value, 8)
    assert side == int(value) and type(side) is int


@pytest.mark.parametrize("value", [0, -8, 100, 12.0, 512.0, "512", True, None, np.float32(64)])
def test_invalid_sides_are_refused_with_the_name_and_the_value(value):
    with pytest.raises(ZoodipError) as info:
        check_side("height", value, 8, example=512)
    message = str(info.value)
    assert message.startswith("height must be a positive multiple of 8, got ")
    assert repr(value) in message and message.endswith("use e.g. 512")


def test_the_vae_factor_tightens_the_rule():
    assert side_problem(24) is None          # no model: a multiple of 8 is enough
    assert side_problem(24, 16) is not None  # a VAE that downscales 16x needs multiples of 16
    assert "multiple of 16" in side_problem(24, 16)


def test_the_model_and_generation_use_the_rule(tiny_export, doubling_unet_export):
    from zoodip.generate import _latent_shape
    from zoodip.model import ExportedModel

    model = ExportedModel.load(tiny_export)
    factor = model.vae_scale_factor
    assert model.check_resolution(8 * factor) == 8
    # Its UNet resizes each upsampling to its skip connection: every multiple of the VAE's 8 px runs, as in diffusers.
    assert model.unet_follows_skips and model.side_multiple == side_multiple(factor) == 8
    assert model.check_resolution(136) == 17
    with pytest.raises(ZoodipError, match=f"resolution must be a positive multiple of {model.side_multiple}"):
        model.check_resolution(8 * factor + 1)
    # An export whose UNet doubles at each upsampling: its one halving must be exact too (16 px).
    doubling = ExportedModel.load(doubling_unet_export)
    assert doubling.unet_halvings == 1 and not doubling.unet_follows_skips
    assert doubling.side_multiple == side_multiple(2 * factor) == 16
    with pytest.raises(ZoodipError, match="resolution must be a positive multiple of 16 on this export, got 136: its "
                                          "UNet was exported before it ran any multiple of 8"):
        doubling.check_resolution(136)
    with pytest.raises(ZoodipError, match="^width must be a positive multiple"):
        _latent_shape(model, None, 3)


def test_derived_sides_follow_a_unet_that_resizes_even_without_its_halvings_recorded():
    """A manifest that says the UNet follows its skip connections but lacks unet_halvings (hand-edited): 8 px, as
    `zoodip info` says, not SD's 64 for exports that record neither."""
    from types import SimpleNamespace

    from zoodip.image_side import model_side_multiple, unet_side_multiple

    follows = SimpleNamespace(vae_scale_factor=8, unet_halvings=None, unet_follows_skips=True,
                              side_multiple=unet_side_multiple(8, None, True))
    older = SimpleNamespace(vae_scale_factor=8, unet_halvings=None, unet_follows_skips=False,
                            side_multiple=unet_side_multiple(8, None, False))
    assert model_side_multiple(follows, derived=True) == 8 and model_side_multiple(older, derived=True) == 64
