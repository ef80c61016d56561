"""A personalize run whose disk fills up: each failure's line says what the user can do next, and it is so."""
from __future__ import annotations

import builtins
import errno
import os
from typing import Callable

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, personalize_args, run_cli


def _images_find_the_disk_full(monkeypatch) -> Callable[[], None]:
    """Every image save (Pillow's) fails as on a full disk, until the returned function is called."""
    from PIL import Image as PILImage

    def full_disk(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_save = PILImage.Image.save
    monkeypatch.setattr(PILImage.Image, "save", full_disk)
    return lambda: monkeypatch.setattr(PILImage.Image, "save", real_save)


def test_a_full_disk_at_the_first_log_line_says_run_again_not_resume(tiny_export, photos, tmp_path, capsys,
                                                                      monkeypatch):
    """It said "resume with --resume (the last checkpoint is intact)", but the start had removed the run folder, and
    --resume then found nothing to resume."""
    real_open, out = builtins.open, tmp_path / "run"

    def full_for_the_log(path, *args, **kwargs):
        if str(path).endswith("log.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_for_the_log)
    code, _, err = run_cli(personalize_args(tiny_export, photos, out), capsys)
    monkeypatch.setattr(builtins, "open", real_open)
    assert_one_line_error(code, err, "(the disk is full): free space")
    assert "--resume" not in err and "run again" in err
    assert not out.exists()


@pytest.mark.parametrize("max_steps,checkpointing,validation,failed_at", [("4", "2", "2", 2), ("5", "100", "3", 3)])
def test_a_full_disk_at_a_preview_says_resume_and_the_resume_loses_no_step(tiny_export, photos, tmp_path, capsys,
                                                                            monkeypatch, max_steps, checkpointing,
                                                                            validation, failed_at):
    """It said "free space or choose another file", but a preview's file is the run's to name: the fix is to resume.
    A preview at a step with no checkpoint (--validation_steps 3, --checkpointing_steps 100) that failed ended the run
    with the checkpoint of step 0, and the resume ran the 3 steps again: it is saved at the preview's step now."""
    out, undo = tmp_path / "run", _images_find_the_disk_full(monkeypatch)
    args = personalize_args(tiny_export, photos, out, "--max_train_steps", max_steps, "--checkpointing_steps",
                            checkpointing, "--validation_prompt", "a photo of <striped-star>", "--validation_steps",
                            validation, "--resolution", "64")
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "--validation_prompt preview")
    assert "(the disk is full): free space and resume with --resume" in err and "another file" not in err
    assert int(np.load(out / "checkpoint.npz")["step"]) == failed_at
    undo()
    assert run_cli([*args, "--resume"], capsys)[0] == 0
    assert (out / "learned_embeds.safetensors").is_file()
    # The checkpoint was the failed preview's step, which the resume does not run again: it writes that preview first
    assert sorted(p.name for p in out.glob("validation-steps-*.png")) == [f"validation-steps-{failed_at}.png",
                                                                        f"validation-steps-{max_steps}.png"]


def test_a_full_disk_at_the_last_preview_is_written_when_the_finished_run_is_resumed(tiny_export, photos, tmp_path,
                                                                                     capsys, monkeypatch):
    """The last step's preview failed after its checkpoint: --resume (as the line said) wrote the embedding, but the
    preview of the learned token, the one image the user waits for, never."""
    from PIL import Image as PILImage

    real_save, out, saves = PILImage.Image.save, tmp_path / "run", []

    def full_at_the_second(self, fp, *args, **kwargs):  # (the first preview, at step 2, is written)
        saves.append(fp)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", full_at_the_second)
    args = personalize_args(tiny_export, photos, out, "--max_train_steps", "4", "--validation_prompt",
                            "a photo of <striped-star>", "--validation_steps", "2", "--resolution", "64")
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "(the disk is full): free space and resume with --resume")
    assert int(np.load(out / "checkpoint.npz")["step"]) == 4 and not (out / "validation-steps-4.png").exists()
    assert run_cli([*args, "--resume"], capsys)[0] == 0
    assert (out / "learned_embeds.safetensors").is_file() and (out / "validation-steps-4.png").is_file()
    assert len(saves) == 3  # (the step-2 preview is there: not written again)

