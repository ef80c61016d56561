"""reference/train_reference.py's continuation path: a trained folder loads into the training modules and back."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODEL = REPO / "reference" / "model"


@pytest.mark.skipif(not (MODEL / "unet").is_dir(), reason="reference/model is not in this checkout")
def test_continuation_starts_from_the_trained_folder(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from reference import train_reference as tr
    from zoodip_export.clip_vocab import write_clip_tokenizer_files

    write_clip_tokenizer_files(tmp_path / "tok")
    captioner = tr.Captioner(tmp_path / "tok")
    compact = tr.build_text_encoder(0, captioner.vocab)
    unet = UNet2DConditionModel(**tr.configs()["unet"])
    tr.load_trained(MODEL, unet, compact, captioner.vocab)

    trained_unet = UNet2DConditionModel.from_pretrained(MODEL / "unet").float()
    for name, value in trained_unet.state_dict().items():
        assert torch.equal(unet.state_dict()[name], value), name
    # The compact encoder (caption tokens only) expands back to the committed full-vocabulary one.
    trained_text = CLIPTextModel.from_pretrained(MODEL / "text_encoder").float().eval()
    expanded = tr.expand_text_encoder(compact, captioner.vocab, 0)
    ids = captioner(["a photo of a small red star with stripes on a blue background"])
    full_ids = torch.from_numpy(captioner.vocab)[ids]
    with torch.no_grad():
        assert torch.allclose(compact(ids).last_hidden_state, trained_text(full_ids).last_hidden_state, atol=1e-6)
        assert torch.allclose(expanded(full_ids).last_hidden_state, trained_text(full_ids).last_hidden_state, atol=1e-6)
