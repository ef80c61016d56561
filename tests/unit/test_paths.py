"""zoodip.paths' file locks: one holder at a time, and never a lock on a file the path no longer names."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from zoodip.errors import ZoodipError
from zoodip.paths import exclusive_lock

fcntl = pytest.importorskip("fcntl")  # POSIX: where it is missing, exclusive_lock locks nothing


def test_exclusive_lock_refuses_a_second_holder_at_once_and_frees_itself(tmp_path):
    lock = tmp_path / "deep" / "x.lock"
    with exclusive_lock(lock):
        with pytest.raises(ZoodipError, match="^busy here$"):
            with exclusive_lock(lock, busy="busy here"):  # another open file: flock refuses it
                pass
    with exclusive_lock(lock, busy="busy here"):
        pass


def test_a_lock_file_removed_between_open_and_flock_is_taken_again_at_its_path(tmp_path, monkeypatch):
    # A second run that opened the lock file just before the first one removed it (run_folder_lock does, as a
    # run ends) would hold a lock on a file nobody else opens, and a third run could start beside it.
    lock = tmp_path / "x.lock"
    real_flock, calls = fcntl.flock, []

    def holder_ends_in_between(handle, operation):
        calls.append(operation)
        if len(calls) == 1:  # the first run removes the file, and a third one creates it afresh
            lock.unlink()
            lock.write_text("")
        real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", holder_ends_in_between)
    with exclusive_lock(lock, busy="busy"):
        assert len(calls) == 2  # retaken on the file the path names now
        monkeypatch.setattr(fcntl, "flock", real_flock)
        with open(lock) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_os_errors_are_one_line_with_the_path_or_what_failed(tmp_path):
    """Found by sweeps: a loop of links was pathlib's RuntimeError (a traceback); NumPy's short write on a full disk
    has no file name and no errno, and was said as 'a path: oserror'."""
    import errno
    import os

    from zoodip.paths import lies_within, os_error_line

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError) as info:
        lies_within(tmp_path / "a" / "sub", tmp_path)
    assert info.value.errno == errno.ELOOP
    assert os_error_line(info.value).endswith("its links form a loop: point the link at a real file")
    long = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "x" * 300)
    assert os_error_line(long) == "x" * 60 + "...: the name is too long for the file system: use a shorter one"
    assert os_error_line(OSError("10 requested and 4 written")) == (
        "a file could not be read or written (the disk is full): free space and check the paths given")


def test_a_missing_input_says_what_hides_it(tmp_path):
    """A link loop, a link whose target is gone or a file inside the path were all said as "does not exist",
    which sends the user looking for a missing folder rather than at the link."""
    import os
    from zoodip.images import list_images
    from zoodip.paths import why_missing

    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    assert why_missing(tmp_path / "nothing") == "does not exist"
    assert why_missing(tmp_path / "a").startswith("is a loop of symbolic links")
    assert why_missing(tmp_path / "a" / "x").startswith("is a loop of symbolic links")
    assert why_missing(tmp_path / "dangling") == f"is a symbolic link to {tmp_path / 'gone'}, which does not exist"
    assert why_missing(tmp_path / "file" / "x") == "does not exist (a part of the path is a file, not a folder)"
    assert why_missing(tmp_path / "pipe").startswith("is neither a file nor a folder")
    with pytest.raises(ZoodipError, match=r"^image folder \S+ is a loop of symbolic links"):
        list_images(tmp_path / "a")


def test_a_failed_write_says_the_fix_that_fits_its_cause(tmp_path):
    """Every failed write was told to free space: a read-only folder too, and NumPy's short write (no errno) was said
    in its own words ("1024 requested and 992 written")."""
    import errno
    from zoodip.paths import atomic_write_bytes, write_failure

    assert write_failure(OSError(errno.ENOSPC, "No space left on device")) == ("the disk is full", "free space")
    assert write_failure(OSError("1024 requested and 992 written")) == ("the disk is full", "free space")
    assert write_failure(OSError(errno.EROFS, "Read-only file system")) == ("Read-only file system",
                                                                           "make the folder writable")
    assert write_failure(OSError(errno.EPERM, "Operation not permitted"))[1] == "make the folder writable"

    def refused(handle):
        raise OSError(errno.EACCES, "Permission denied")
    (tmp_path / "c.npz").write_bytes(b"before")
    with pytest.raises(ZoodipError, match=r"cannot write \S+c\.npz: Permission denied; the previous version is intact: "
                                          r"make the folder writable and resume with --resume$"):
        atomic_write_bytes(tmp_path / "c.npz", refused, "resume with --resume")
    assert (tmp_path / "c.npz").read_bytes() == b"before" and len(list(tmp_path.iterdir())) == 1


def test_a_write_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    """A linked checkpoint, embedding or image became a plain file at the first save, its target left stale."""
    import numpy as np
    from PIL import Image
    from zoodip.images import save_images
    from zoodip.paths import atomic_write_bytes
    from zoodip.safetensors_io import load_file, save_file

    (tmp_path / "kept").mkdir()
    for name, write in (("c.npz", lambda path: atomic_write_bytes(path, lambda handle: handle.write(b"new"))),
                        ("e.safetensors", lambda path: save_file({"v": np.zeros(2, np.float32)}, path)),
                        ("x.png", lambda path: save_images([(Image.new("RGB", (4, 4), "red"), path)]))):
        (tmp_path / "kept" / name).write_bytes(b"old")
        (tmp_path / name).symlink_to(tmp_path / "kept" / name)
        write(tmp_path / name)
        assert (tmp_path / name).is_symlink() and (tmp_path / "kept" / name).read_bytes() != b"old"
    assert (tmp_path / "kept" / "c.npz").read_bytes() == b"new"
    assert load_file(tmp_path / "kept" / "e.safetensors")["v"].tolist() == [0, 0]
    assert Image.open(tmp_path / "kept" / "x.png").getpixel((0, 0)) == (255, 0, 0)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["c.npz", "e.safetensors", "x.png"]  # no temp


def test_the_run_log_and_the_run_start_give_the_fix_that_fits_the_failure(tmp_path, monkeypatch):
    """Both said "free space" whatever failed (a read-only folder, a log that is a folder)."""
    import builtins
    import errno
    from zoodip.run_checks import append_log

    (tmp_path / "log.jsonl").mkdir()
    with pytest.raises(ZoodipError, match=r"cannot append to \S+log\.jsonl \(Is a directory\): check the folder, then "
                                          r"resume with resume=True \(the last checkpoint is intact\)$"):
        append_log(tmp_path / "log.jsonl", {"step": 1})

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(builtins, "open", read_only)
    with pytest.raises(ZoodipError, match=r"\(Read-only file system\): make the folder writable, then resume"):
        append_log(tmp_path / "other.jsonl", {"step": 1})


def test_a_link_to_what_is_no_file_is_replaced_not_written_through(tmp_path):
    """Written through, a link to a device replaced the device (as root: /dev/null became a file of latents), and a
    link to a file of another suffix made Pillow pick no format (a traceback) or another one."""
    import os

    from PIL import Image
    from zoodip.images import save_images
    from zoodip.paths import atomic_write_bytes

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "c.npz").symlink_to(tmp_path / "pipe")
    atomic_write_bytes(tmp_path / "c.npz", lambda handle: handle.write(b"new"))
    assert (tmp_path / "c.npz").read_bytes() == b"new" and not (tmp_path / "c.npz").is_symlink()
    assert (tmp_path / "pipe").is_fifo()
    (tmp_path / "plain.dat").write_bytes(b"old")
    (tmp_path / "x.png").symlink_to(tmp_path / "plain.dat")
    save_images([(Image.new("RGB", (4, 4), "red"), tmp_path / "x.png")])
    assert Image.open(tmp_path / "plain.dat").format == "PNG"  # the name the user gave says the format


def test_temp_files_left_beside_a_links_target_are_cleaned_with_the_runs(tmp_path):
    from zoodip.paths import remove_stale_temp_files

    (tmp_path / "run").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "kept.npz").write_bytes(b"checkpoint")
    (tmp_path / "run" / "checkpoint.npz").symlink_to(tmp_path / "store" / "kept.npz")
    (tmp_path / "store" / ".kept.npz.tmp-123-abcd").write_bytes(b"half")  # a write killed mid-way
    (tmp_path / "run" / ".checkpoint.npz.tmp-123-abcd").write_bytes(b"half")
    removed = remove_stale_temp_files(tmp_path / "run", ("checkpoint.npz",))
    assert len(removed) == 2 and sorted(p.name for p in (tmp_path / "store").iterdir()) == ["kept.npz"]


def test_a_link_target_folder_that_cannot_be_listed_is_left_alone(tmp_path, monkeypatch):
    """A link into a drop box (writable, not listable) stopped the run at its start with "permission denied"."""
    import errno
    import pathlib

    from zoodip.paths import remove_stale_temp_files

    (tmp_path / "run").mkdir()
    (tmp_path / "box").mkdir()
    (tmp_path / "run" / "learned_embeds.safetensors").symlink_to(tmp_path / "box" / "e.safetensors")
    listing = pathlib.Path.iterdir

    def refused(self):
        if self.name == "box":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return listing(self)
    monkeypatch.setattr(pathlib.Path, "iterdir", refused)
    assert remove_stale_temp_files(tmp_path / "run", ("learned_embeds.safetensors",)) == []


def test_a_folder_where_the_file_goes_is_not_said_to_be_intact(tmp_path):
    from zoodip.paths import atomic_write_bytes

    (tmp_path / "e.safetensors").mkdir()
    with pytest.raises(ZoodipError, match=r"cannot write \S+e\.safetensors: Is a directory: check the folder"):
        atomic_write_bytes(tmp_path / "e.safetensors", lambda handle: handle.write(b"x"))
    import numpy as np
    from zoodip.embeddings import save_learned_embeds

    with pytest.raises(ZoodipError, match=r"check the folder and resume with --resume$"):  # (was: "try again")
        save_learned_embeds(tmp_path / "e.safetensors", "<t>", np.zeros(4, np.float32), then="resume with --resume")


def test_an_interrupted_write_leaves_the_previous_file_and_no_temp_file(tmp_path):
    from zoodip.paths import atomic_write_bytes

    def interrupted(handle):
        handle.write(b"half")
        raise KeyboardInterrupt
    (tmp_path / "c.npz").write_bytes(b"before")
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "c.npz", interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"] and (tmp_path / "c.npz").read_bytes() == b"before"


def test_what_is_there_but_of_the_other_kind_is_said_as_what_it_is(tmp_path):
    """A folder given for a file was said to be "a device, pipe or socket"; a link to nothing given as an output
    was said to lie under a file; a Pillow encoder's error (no errno) was said to be a full disk."""
    import os
    from zoodip.paths import check_output_file, why_missing, write_failure

    (tmp_path / "adir.npy").mkdir()
    assert why_missing(tmp_path / "adir.npy") == "is a folder"
    os.symlink(tmp_path / "gone" / "x.npy", tmp_path / "dangling.npy")
    with pytest.raises(ZoodipError, match=r"--save-latents \S+dangling\.npy is a symbolic link to \S+x\.npy, which "
                                          r"does not exist: remove the link, or name another path"):
        check_output_file(tmp_path / "dangling.npy", "--save-latents", (".npy",))
    assert write_failure(OSError("encoder error -2 when writing image file")) == (
        "encoder error -2 when writing image file", "check the folder")


def test_an_output_under_a_link_to_nothing_says_so(tmp_path):
    import os
    from zoodip.paths import check_output_file

    os.symlink(tmp_path / "missing-dir", tmp_path / "dd")
    with pytest.raises(ZoodipError, match=r"lies under \S+dd, which is a symbolic link to \S+missing-dir, which does "
                                          "not exist: choose another path"):
        check_output_file(tmp_path / "dd" / "x.png", "--out")


def test_generate_and_personalize_treat_a_link_to_nothing_alike(tmp_path):
    """One rule for the outputs a user names (generate --out, personalize --output_dir / --progress-jsonl): a link to
    nothing is refused, the same words for each (only 'zoodip export OUT_DIR' follows one: it publishes a folder)."""
    import os
    from zoodip.paths import check_output_dir, check_output_file

    os.symlink(tmp_path / "nothing.png", tmp_path / "out.png")
    os.symlink(tmp_path / "nothing", tmp_path / "run")
    said = r" \S+ is a symbolic link to \S+, which does not exist: remove the link, or name another path$"
    with pytest.raises(ZoodipError, match="^--out" + said):
        check_output_file(tmp_path / "out.png", "--out", (".png",))
    with pytest.raises(ZoodipError, match="^output_dir" + said):  # (the API's name; the command line says its flag)
        check_output_dir(tmp_path / "run")
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "nothing.png").exists()


def test_swap_folder_in_replaces_an_old_folder_and_leaves_nothing_beside(tmp_path: Path) -> None:
    from zoodip.paths import swap_folder_in

    built, dest = tmp_path / "built", tmp_path / "dest"
    built.mkdir()
    (built / "new.txt").write_text("new")
    swap_folder_in(built, dest)  # nothing there yet
    assert [p.name for p in tmp_path.iterdir()] == ["dest"] and (dest / "new.txt").read_text() == "new"
    built.mkdir()
    (built / "newer.txt").write_text("newer")
    swap_folder_in(built, dest)
    assert [p.name for p in tmp_path.iterdir()] == ["dest"] and [p.name for p in dest.iterdir()] == ["newer.txt"]


def test_a_log_line_the_full_disk_took_half_of_is_cut_back_to_the_lines_before(tmp_path, monkeypatch):
    """The run log kept the half line a full disk had taken (the progress log cut its back; this one did not)."""
    import builtins
    import errno
    import os
    from zoodip.run_checks import append_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0, "eval_loss": 1.0}\n')
    real_open = builtins.open

    class HalfThenFull:  # the log file on a disk that takes half of the line and then nothing
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

    def filling_up(path, *args, **kwargs):
        file = real_open(path, *args, **kwargs)
        return HalfThenFull(file) if str(path) == str(log) else file

    monkeypatch.setattr(builtins, "open", filling_up)
    with pytest.raises(ZoodipError, match=r"\(the disk is full\): free space, then resume with resume=True"):
        append_log(log, {"step": 1, "loss": 0.5})
    monkeypatch.setattr(builtins, "open", real_open)
    assert log.read_text() == '{"step": 0, "eval_loss": 1.0}\n'


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_an_export_killed_between_the_swaps_renames_is_said_and_put_back(tmp_path: Path, capsys) -> None:
    """A kill after OUT was renamed aside and before the new one was renamed in left no OUT: reading it named no
    aside folder ("does not exist"), and the next export went on without it, the old export left behind for good."""
    from zoodip.describe import describe
    from zoodip.export_folder import check_out_dir
    from zoodip.manifest import FORMAT, read_manifest

    dest = tmp_path / "OUT"
    aside = tmp_path / f".OUT.old-{_dead_pid()}"
    aside.mkdir()
    (aside / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    for read in (describe, read_manifest):
        with pytest.raises(ZoodipError, match=r"killed half-way .*\.OUT\.old-\d+: rename it back to OUT"):
            read(dest)
    # The old export is back, and the refusal says so in its one line (it was a note "restored ..." and then "output
    # folder OUT exists and is not empty", as if OUT were this export's doing).
    with pytest.raises(ZoodipError, match=rf"^OUT_DIR {dest} holds its earlier export again: an export that was "
                                          rf"replacing it was killed half-way and had left it aside as {aside.name}, "
                                          r"now put back; add --overwrite to replace it with this export, or choose "
                                          r"another OUT_DIR$"):
        check_out_dir(dest, overwrite=False)
    assert (dest / "manifest.json").is_file() and not aside.exists()
    assert capsys.readouterr().err == ""
    shutil.move(dest, aside)  # with --overwrite the export goes on, and says what it put back
    check_out_dir(dest, overwrite=True)
    assert (dest / "manifest.json").is_file() and not aside.exists()
    assert capsys.readouterr().err == f"restored OUT from {aside.name}, where a replacement killed half-way had left it\n"
    aside.mkdir()  # the kill came during the removal of the old one, after the new one was in: it goes
    check_out_dir(tmp_path / "OUT", overwrite=True)
    assert not aside.exists() and (dest / "manifest.json").is_file()


def test_the_finished_swap_is_said_as_it_happened_not_as_foreseen(tmp_path: Path, monkeypatch, capsys) -> None:
    """check_out_dir said what finish_interrupted_swap would do, worked out beside it: an old export whose removal
    failed was said 'removed .OUT.old-N' and stayed. finish_interrupted_swap now returns what it did, as found after
    it (export_folder.FinishedSwap), which check_out_dir says and acts on."""
    from zoodip.export_folder import check_out_dir, finish_interrupted_swap
    from zoodip.manifest import FORMAT

    dest = tmp_path / "OUT"
    dest.mkdir()
    (dest / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    aside = tmp_path / f".OUT.old-{_dead_pid()}"
    aside.mkdir()
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # (a removal that fails, ignore_errors=True)
    check_out_dir(dest, overwrite=True)
    assert aside.is_dir()
    assert capsys.readouterr().err == (f"could not remove {aside.name}, the previous OUT that a replacement killed "
                                       "before its cleanup left: remove it to free its space\n")
    monkeypatch.undo()
    assert str(finish_interrupted_swap(dest)) == (f"removed {aside.name}, the previous OUT that a replacement killed "
                                                  "before its cleanup left") and not aside.exists()
    assert finish_interrupted_swap(dest) is None


def test_a_path_that_is_not_utf8_is_refused_naming_what_cannot_open_it(tmp_path: Path) -> None:
    """onnxruntime and safetensors take UTF-8 paths only; their own errors blamed the files."""
    from zoodip.paths import check_utf8_path

    check_utf8_path(tmp_path / "ok-\u00e9", "OUT_DIR", "safetensors")
    with pytest.raises(ZoodipError, match=r"^OUT_DIR .* has a path that is not UTF-8 .* which safetensors cannot open"):
        check_utf8_path(tmp_path / os.fsdecode(b"m\xff") / "out", "OUT_DIR", "safetensors")
