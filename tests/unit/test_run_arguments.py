"""zoodip.trainer.personalize's own arguments, as an app calls it without PersonalizationJob: each a ZoodipError
before any work (it was an AttributeError or TypeError after the model loaded, or a 'no' that resumed)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.trainer import PersonalizeConfig, Personalizer, personalize


def _config(tmp_path):
    return PersonalizeConfig(export_dir=tmp_path / "export", images=tmp_path / "photos", output_dir=tmp_path / "run")


@pytest.mark.parametrize("arguments, needle", [
    (dict(config={"export_dir": "sd15-int8"}), "config must be a PersonalizeConfig, got dict"),
    (dict(on_progress=5), "on_progress must be callable"),
    (dict(resume="no"), "resume must be True or False, got 'no'"),
    (dict(cancel_event=True), "cancel_event must be a threading.Event"),
])
def test_personalize_refuses_arguments_of_the_wrong_kind_before_any_work(tmp_path, arguments, needle):
    arguments = {"config": _config(tmp_path), **arguments}
    with pytest.raises(ZoodipError, match=needle):
        personalize(**arguments)
    assert not (tmp_path / "run").exists()


def test_personalizer_refuses_the_same_before_loading_the_model(tmp_path):
    with pytest.raises(ZoodipError, match="config must be a PersonalizeConfig, got NoneType"):
        Personalizer(None)
    with pytest.raises(ZoodipError, match="cancel_event must be a threading.Event"):
        Personalizer(_config(tmp_path), cancel_event=lambda: False)


def test_what_is_right_passes_the_argument_check(tmp_path):
    """NumPy's bool is a bool and any event with is_set() cancels (a multiprocessing.Event too): the run goes on to
    the config's own checks (the export folder that is not there)."""
    for arguments in (dict(resume=np.bool_(False)), dict(cancel_event=threading.Event()), dict(on_progress=print)):
        with pytest.raises(ZoodipError, match="export"):
            personalize(_config(tmp_path), **arguments)


def test_a_jsonl_progress_writer_needs_a_stream_to_write_to():
    """jsonl_progress_writer(None) (or a path) was accepted, and the job it was given to stopped at its first event with
    an AttributeError ('NoneType' object has no attribute 'write') raised by wait()."""
    from zoodip.api import jsonl_progress_writer

    for stream in (None, "progress.jsonl"):
        with pytest.raises(ZoodipError, match="a text stream open for writing"):
            jsonl_progress_writer(stream)
