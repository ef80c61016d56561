"""The package as an app backend installs it: the wheel's files and dependencies, its build requirements, and
``zoodip export`` in an install without the export extra (one line, not a traceback)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import zoodip
from zoodip.errors import ZoodipError

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# What an install without the export extra looks like: these cannot be imported (None in sys.modules).
HIDE_EXPORT_EXTRA = "import sys; sys.modules.update(dict.fromkeys(('torch', 'onnx', 'diffusers', 'transformers')))"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_build_requirements_can_read_the_license_field():
    # A license given as an SPDX string (PEP 639) is read by setuptools 77 on; older ones stop the build with a
    # configuration error, and `pip install --no-build-isolation .` uses whatever setuptools the environment has.
    if not isinstance(PYPROJECT["project"].get("license"), str):
        pytest.skip("the license is not an SPDX string")
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools.startswith("setuptools>=") and _version_tuple(setuptools.split(">=")[1]) >= (77,)


def test_export_extra_lists_what_the_exporter_checks_for():
    from zoodip_export.requirements import REQUIRED_MODULES

    extra = {r.split("==")[0].split(">=")[0].strip().lower() for r in PYPROJECT["project"]["optional-dependencies"]["export"]}
    runtime = {r.split(">=")[0].strip().lower() for r in PYPROJECT["project"]["dependencies"]}
    assert set(REQUIRED_MODULES) == extra - runtime  # (onnxruntime: the SDK's own, pinned there for the export)


@pytest.mark.parametrize("argv", [["--tiny", "OUT"], ["--help"]])
def test_export_without_the_extra_is_one_line(tmp_path: Path, argv: list[str]):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code = f"{HIDE_EXPORT_EXTRA}; from zoodip.cli import main; sys.exit(main(['export', *{argv!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch" in lines[0] and "onnx" in lines[0] and ".[export]" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_export_api_without_the_extra_raises_zoodip_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from zoodip_export.export_model import export_model

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ZoodipError, match="diffusers"):
        export_model(None, tmp_path / "out", tiny=True)
    assert not (tmp_path / "out").exists()


def test_missing_clip_vocabulary_is_a_zoodip_error(monkeypatch: pytest.MonkeyPatch):
    from zoodip_export.clip_vocab import find_bpe_file

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ZoodipError, match="open-clip-torch"):
        find_bpe_file()


def test_the_clip_vocabulary_package_is_named_alike_everywhere():
    """The pin of open-clip-torch (CLIP's vocabulary) is written in the Makefile, the README and the export's
    error line: one changed alone would send a user to another version than make setup installs."""
    from zoodip_export.clip_vocab import OPEN_CLIP_REQUIREMENT

    assert f"--no-deps {OPEN_CLIP_REQUIREMENT}\n" in (REPO / "Makefile").read_text()
    readme = (REPO / "README.md").read_text()
    assert f"pip install --no-deps {OPEN_CLIP_REQUIREMENT} for --tiny and single-file exports" in readme


def _expected_wheel_files() -> set[str]:
    sdk = {f"zoodip/{p.relative_to(REPO / 'sdk/zoodip').as_posix()}" for p in (REPO / "sdk/zoodip").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts}
    export = {f"zoodip_export/{p.name}" for p in (REPO / "export").glob("*.py")}
    return sdk | export


def test_wheel_holds_the_sdk_and_its_data_and_nothing_else(tmp_path: Path):
    # Everything under sdk/zoodip is read at run time (templates and example photos via __file__, py.typed by type
    # checkers): a data file not named in package-data would be missing only from installs, never from a clone.
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: an in-tree build leaves build/ behind, and its stale files go into wheels
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("sdk", "export"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("no pip in this environment")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is absent from the `packages` configuration" not in proc.stderr  # 40 lines of warnings in every setup
    (wheel,) = (tmp_path / "dist").glob("zoodip-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"\nVersion: {zoodip.__version__}\n" in metadata
    assert {n for n in names if ".dist-info/" not in n} == _expected_wheel_files()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # the license the metadata names, with it
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = {r.split(">=")[0].split("==")[0].lower() for r in requires if "extra ==" not in r}
    assert runtime == {"numpy", "onnxruntime", "pillow", "tqdm"}  # never torch: the SDK runs on Android's onnxruntime


def test_one_version_said_by_the_package_and_the_command(capsys: pytest.CaptureFixture[str]):
    # pyproject reads it from zoodip.__version__ (the version exports and images record): two copies drift apart.
    from zoodip.cli import main

    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"zoodip {zoodip.__version__}"
