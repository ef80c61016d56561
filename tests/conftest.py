"""Shared fixtures: one tiny SD-shaped diffusers folder and its INT8 export for the whole session."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests import the benchmarks' checks (benchmarks._fidelity) as the scripts run them
EXAMPLE_PHOTOS = REPO / "sdk" / "zoodip" / "data" / "example_concept"


def pytest_configure(config) -> None:
    """A test run started in the background (``make test &``, a CI runner's job) inherits SIGINT ignored, and so would
    every command a test starts: the tests that deliver a Ctrl-C (to a command, or to a GracefulStop in this process)
    then saw it ignored, as the SDK rightly does under ``&``. The suite takes Ctrl-C as a terminal delivers it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> Path:
    from zoodip_export.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(tmp_path_factory.mktemp("tiny") / "tiny_sd", seed=0)


@pytest.fixture(scope="session")
def tiny_export(tiny_sd_folder, tmp_path_factory) -> Path:
    """The W8A32 (int8 everywhere) export of the tiny folder, with a curvature subspace from 4 draws (16 by default).

    Most tests run on it: the all-int8 recipe is the reference the 4-bit default (:func:`tiny_w4_export`) is held to.
    """
    from zoodip_export.export_model import export_model

    out = tmp_path_factory.mktemp("export") / "tiny_int8"
    export_model(tiny_sd_folder, out, recipe="w8a32", parity=False, progress=False, curvature_samples=4)
    return out


@pytest.fixture(scope="module")
def model(tiny_export):
    """The tiny export loaded, one per test module (a module's tests may patch it)."""
    from zoodip.model import ExportedModel

    return ExportedModel.load(tiny_export)


@pytest.fixture(scope="session")
def tiny_w4_export(tiny_sd_folder, tmp_path_factory) -> Path:
    """The W4A32 export of the tiny folder (the default recipe: 4-bit weights where they hold), with a curvature
    subspace from 4 draws as :func:`tiny_export`."""
    from zoodip_export.export_model import export_model

    out = tmp_path_factory.mktemp("export") / "tiny_w4"
    export_model(tiny_sd_folder, out, recipe="w4a32", progress=False, curvature_samples=4)
    return out


@pytest.fixture(scope="session")
def doubling_unet_export(tiny_sd_folder, tmp_path_factory) -> Path:
    """The tiny folder exported as before the UNet followed its skip connections' sizes: its upsamplings double, so it
    runs only at sides its one halving divides exactly (16 px), and its manifest says so (no curvature, no parity)."""
    from zoodip_export import onnx_export
    from zoodip_export.export_model import export_model

    out = tmp_path_factory.mktemp("export") / "tiny_doubling"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "follow_skip_sizes", lambda unet: False)
        export_model(tiny_sd_folder, out, recipe="w8a32", parity=False, progress=False, curvature_samples=0)
    return out


@pytest.fixture(scope="session")
def photos() -> Path:
    return EXAMPLE_PHOTOS


@pytest.fixture(autouse=True, scope="session")
def _private_verification_cache(tmp_path_factory):
    """Remembered sha256 checks (zoodip.integrity) go to a session folder, never the user's cache."""
    import os

    os.environ["ZOODIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("zoodip-cache"))
