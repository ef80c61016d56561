"""benchmarks/attribute_signal.py: the per-timestep signal of each attribute in the denoising loss."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import attribute_signal  # noqa: E402
from reference import world  # noqa: E402


@pytest.mark.parametrize("concept", world.CONCEPTS, ids=lambda c: c.name)
def test_each_contrast_changes_exactly_its_attribute(concept) -> None:
    captions = attribute_signal.contrast_captions(concept.attributes)
    assert captions["concept"] == [world.caption(concept.attributes)]
    assert set(captions) == {"concept", *world.ATTRIBUTES}
    for name, values in world.ATTRIBUTES.items():
        assert captions[name], f"{concept.name}: no contrast for {name}"
        expected = {world.caption(concept.attributes.replace(**{name: v})) for v in values
                    if v != getattr(concept.attributes, name) and world.compatible(concept.attributes.replace(**{name: v}))}
        assert set(captions[name]) == expected


def test_signal_to_noise_ratio() -> None:
    assert attribute_signal.signal_to_noise(np.array([1.0, 3.0])) == pytest.approx(4.0)  # mean 2, var 1
    assert attribute_signal.signal_to_noise(np.array([-1.0, 1.0])) == 0.0
    assert attribute_signal.signal_to_noise(np.array([0.5, 0.5])) == 0.0  # no variance: no ratio claimed


def test_bad_inputs_are_one_line(capsys) -> None:
    for argv, words in ((["--draws", "1"], "--draws"), (["--model", "sd3"], "--model"),
                        (["--concepts", "<no-such>"], "--concepts")):
        assert attribute_signal.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err


@pytest.mark.slow
def test_a_run_on_the_64_wide_model(tmp_path: Path) -> None:
    """One concept, 2 draws a band: the report is written, and the loss prefers the concept's own caption
    where it reads colour best (the reference model generates the right colour 98% of the time)."""
    assert attribute_signal.main(["--model", "reference-64", "--concepts", "orange-moon", "--draws", "2",
                                  "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    colour = result["per_concept"]["orange-moon"]["color"]
    assert len(colour) == 10 and max(band["mean"] for band in colour.values()) > 0
    assert "| color |" in (tmp_path / "results.md").read_text()
