"""Results record paths relative to the repository, and no tracked file names a machine's absolute path."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from reference.repo import REPO, relative_args, repo_relative  # noqa: E402


def test_repo_is_this_checkout():
    assert REPO == REPO_ROOT and (REPO / "reference" / "repo.py").is_file()


def test_repo_relative_inside_the_repository(tmp_path):
    repo = tmp_path / "checkout"
    assert repo_relative(repo / ".cache" / "bench" / "quality-model-x-w8a32", repo) == ".cache/bench/quality-model-x-w8a32"
    assert repo_relative(repo / "reference" / "model", repo) == "reference/model"
    assert repo_relative(repo, repo) == "."


def test_repo_relative_outside_the_repository_keeps_only_the_name(tmp_path):
    repo = tmp_path / "checkout"
    assert repo_relative(tmp_path / "elsewhere" / "sd15-int8", repo) == "<outside-repo>/sd15-int8"
    # A sibling whose name starts like the repository's is still outside it.
    assert repo_relative(tmp_path / "checkout-2" / "model", repo) == "<outside-repo>/model"


def test_repo_relative_of_a_relative_path_reads_it_from_the_working_directory(tmp_path, monkeypatch):
    repo = tmp_path / "checkout"
    (repo / "benchmarks").mkdir(parents=True)
    monkeypatch.chdir(repo / "benchmarks")
    assert repo_relative(Path("results") / "x", repo) == "benchmarks/results/x"


def test_relative_args_rewrites_only_absolute_paths(tmp_path):
    repo = tmp_path / "checkout"
    args = ["--model", str(repo / "reference" / "model"), f"--out={tmp_path / 'runs' / 'a'}", "--seeds", "3",
            "--torch-model", "reference/model", "--methods", "zoodip,zo-naive"]
    assert relative_args(args, repo) == ["--model", "reference/model", "--out=<outside-repo>/a", "--seeds", "3",
                                         "--torch-model", "reference/model", "--methods", "zoodip,zo-naive"]

    # A NAME=PATH value (problem_dimension.py --models x=/abs/folder) recorded the machine's path
    assert relative_args(["--models", f"x={tmp_path / 'src'}", "a=b"], repo) == ["--models", "x=<outside-repo>/src", "a=b"]


# A machine's absolute path: /work/..., /root/..., /home/..., /tmp/..., /mnt/..., /Users/..., /var/folders/... not
# preceded by a name character or a dot (so "a/work/b" and "./work/x" are not matches).
MACHINE_PATH = re.compile(r"(^|[^.a-zA-Z])/(work|root|home|tmp|mnt|Users|var/folders)/[A-Za-z]")
BINARY_SUFFIXES = (".png", ".onnx", ".ort", ".safetensors", ".npz", ".npy", ".gz")


def test_no_tracked_file_holds_a_machine_path():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    offenders = []
    for name in listed.decode("utf-8").split("\0"):
        path = REPO / name
        if not name or name.endswith(BINARY_SUFFIXES) or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{name}:{number}" for number, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not offenders, f"absolute machine paths (record them relative to the repository): {offenders[:10]}"


def test_write_folder_beside_removes_the_partial_folder_of_a_killed_run(tmp_path):
    """train_reference's and pack's partial folder had one name, removed by the next run; named after the process
    since, that of a run killed for memory (no cleanup runs) stayed beside the model for good, one more each time."""
    import subprocess

    from reference.repo import write_folder_beside

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"model.partial-{int(dead.stdout)}"
    (stale / "text_encoder").mkdir(parents=True)
    other = tmp_path / "model-2.partial-1"  # another destination's (and pid 1 runs): not this one's to remove
    other.mkdir()
    write_folder_beside(tmp_path / "model", lambda folder: folder.mkdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model-2.partial-1"]
