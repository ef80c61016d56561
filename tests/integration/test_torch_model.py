"""zoodip_export.torch_model: the torch reference computation every autograd measurement shares."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_a_word_s_row_in_the_placeholder_conditions_like_the_word(tiny_sd_folder) -> None:
    from zoodip_export.torch_model import TorchModel

    model = TorchModel.load(tiny_sd_folder)
    placeholder_id = model.tokenizer.add_placeholder("<probe>")[0]
    with torch.no_grad():
        via_placeholder = model.condition(model.prompt_ids("a photo of a <probe>"), model.row("cat"), placeholder_id)
        via_word = model.condition(model.prompt_ids("a photo of a cat"))
        # transformers' own CLIPTextModel on the ids: the graph from embeddings is the same function
        from zoodip_export.onnx_export import load_text_encoder

        reference = load_text_encoder(tiny_sd_folder / "text_encoder")(
            torch.from_numpy(model.prompt_ids("a photo of a cat")[None])).last_hidden_state
    torch.testing.assert_close(via_placeholder, via_word)
    torch.testing.assert_close(via_word, reference, atol=1e-5, rtol=1e-5)


def test_the_placeholder_s_vector_reaches_only_its_places_and_carries_gradients(tiny_sd_folder) -> None:
    from zoodip_export.torch_model import TorchModel

    model = TorchModel.load(tiny_sd_folder)
    placeholder_id = model.tokenizer.add_placeholder("<probe>")[0]
    ids = model.prompt_ids("a <probe> next to a <probe>")
    v = torch.randn(model.table.shape[1], requires_grad=True)
    embeds = model.embeds(ids, v, placeholder_id)
    at = np.flatnonzero(ids == placeholder_id)
    assert len(at) == 2
    torch.testing.assert_close(embeds[at], v.detach()[None].expand(2, -1))
    others = np.flatnonzero(ids != placeholder_id)
    torch.testing.assert_close(embeds[others], model.table[torch.from_numpy(ids[others])])
    model.condition(ids, v, placeholder_id).sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_a_word_of_several_tokens_has_no_single_row(tiny_sd_folder) -> None:
    from zoodip_export.torch_model import TorchModel

    model = TorchModel.load(tiny_sd_folder)
    with pytest.raises(ValueError, match="tokens"):
        model.row("photosynthesisxyz")
