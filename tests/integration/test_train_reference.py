"""reference/train_reference.py's continuation path: a trained folder loads into the training modules and back."""
from __future__ import annotations

import json
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


@pytest.mark.parametrize("flags, message", [
    (["--caption-attributes", "color,size"], "--caption-attributes color,size: name the shape"),
    (["--caption-attributes", "shape,colour"], "--caption-attributes shape,colour: name the shape"),
    (["--vae-from", "nowhere"], "--vae-from nowhere: no vae/ folder"),
    (["--device", "gpu"], "--device gpu: not a torch device"),
    (["--vae-from", str(MODEL), "--init-from", str(MODEL)], "--init-from already keeps its folder's VAE"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, flags, message):
    from reference import train_reference as tr

    assert tr.main(flags + ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


@pytest.mark.skipif(not (MODEL / "unet").is_dir(), reason="reference/model is not in this checkout")
def test_a_run_from_scratch_on_a_folders_vae_with_a_poorer_caption_language(tmp_path):
    import json

    from safetensors.numpy import load_file

    from reference import train_reference as tr

    out = tmp_path / "out"
    assert tr.main(["--work", str(tmp_path / "work"), "--out", str(out), "--n-images", "16", "--diffusion-steps", "2",
                    "--batch", "4", "--vae-from", str(MODEL), "--caption-attributes", "shape,color"]) == 0
    meta = json.loads((out / "zoodip_source.json").read_text())
    assert meta["caption_attributes"] == "shape,color" and meta["diffusion_steps"] == 2 and "vae_steps" not in meta
    assert not Path(meta["vae_from"]).is_absolute()
    assert not (tmp_path / "work" / "vae.pt").exists()  # no VAE stage
    kept, theirs = (load_file(f / "vae" / "diffusion_pytorch_model.safetensors") for f in (out, MODEL))
    assert kept.keys() == theirs.keys() and all((kept[k] == theirs[k]).all() for k in kept)
    scales = [json.loads((f / "vae" / "config.json").read_text())["scaling_factor"] for f in (out, MODEL)]
    assert scales[0] == pytest.approx(scales[1])


@pytest.mark.parametrize("flags, message", [
    (["--n-images=-5"], "--n-images must be an integer >= 1"),  # was a traceback after the imports
    (["--diffusion-steps=-1"], "--diffusion-steps must be an integer >= 1"),  # wrote an untrained model
    (["--vae-steps", "0"], "--vae-steps must be an integer >= 1"),
    (["--batch", "0"], "--batch must be an integer >= 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1"),
    (["--warmup=-3"], "--warmup must be an integer >= 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),  # a traceback after rendering the data
    (["--vae-lr=-1e-3"], "--vae-lr must be a finite number > 0"),
    (["--ema", "1.5"], "--ema must be a finite number in [0, 1)"),
    (["--threads", "0"], "--threads must be an integer >= 1"),
])
def test_bad_numbers_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    from reference import train_reference as tr

    small = ["--n-images", "4", "--stop-after", "data"]  # what an unchecked run would do: seconds, not hours
    assert tr.main(small + flags + ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, work, message", [
    ("MODEL", "work", "--out {out} already exists: name a new folder, or add --overwrite"),
    ("FILE", "work", "--out {out} is an existing file"),  # a traceback after the whole training
    ("out", "FILE", "--work {work} is an existing file"),  # a traceback
])
def test_an_existing_output_is_refused_before_any_work(tmp_path, capsys, out, work, message):
    """A trained folder as --out (reference/model was the default) was replaced without a word."""
    from reference import train_reference as tr

    (tmp_path / "FILE").write_text("x")
    (tmp_path / "MODEL").mkdir()
    (tmp_path / "MODEL" / "zoodip_source.json").write_text("{}")
    out, work = tmp_path / out, tmp_path / work
    assert tr.main(["--work", str(work), "--out", str(out), "--n-images", "4", "--stop-after", "data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(out=out, work=work)) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "work").exists() and (tmp_path / "MODEL" / "zoodip_source.json").read_text() == "{}"


def test_the_default_output_is_no_committed_model():
    import subprocess

    run = subprocess.run([sys.executable, "reference/train_reference.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert "default: reference/.work/model" in " ".join(run.stdout.split())


class _Module:
    """Stands for a diffusers/transformers module in save_folder: writes one file, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def half(self):
        return self

    def float(self):
        return self

    def register_to_config(self, **_):
        pass

    def save_pretrained(self, folder, safe_serialization=True):
        if self.fail:
            raise KeyboardInterrupt  # Ctrl-C halfway through the save
        Path(folder).mkdir(parents=True)
        (Path(folder) / "config.json").write_text("{}")


def test_an_interrupted_save_leaves_the_output_as_it_was(tmp_path):
    from reference import train_reference as tr

    out = tmp_path / "out"
    out.mkdir()
    (out / "zoodip_source.json").write_text('{"old": 1}')
    with pytest.raises(KeyboardInterrupt):
        tr.save_folder(out, _Module(), _Module(fail=True), _Module(), 1.0, {"new": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["zoodip_source.json"]
    assert (out / "zoodip_source.json").read_text() == '{"old": 1}'
    tr.save_folder(out, _Module(), _Module(), _Module(), 1.0, {"new": 1})
    assert json.loads((out / "zoodip_source.json").read_text()) == {"new": 1} and (out / "unet").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial or replaced copy left beside it


def test_a_linked_or_dotted_output_is_replaced_where_it_points(tmp_path, monkeypatch):
    """--out LINK --overwrite replaced the link by a folder (the model landed beside the link, its target kept the
    old one), and --out . --overwrite failed with a ValueError after the whole training."""
    from reference import train_reference as tr

    target = tmp_path / "store" / "model"
    target.mkdir(parents=True)
    (target / "zoodip_source.json").write_text('{"old": 1}')
    (tmp_path / "link").symlink_to(target)
    tr.save_folder(tmp_path / "link", _Module(), _Module(), _Module(), 1.0, {"new": 1})
    assert (tmp_path / "link").is_symlink() and json.loads((target / "zoodip_source.json").read_text()) == {"new": 1}
    monkeypatch.chdir(target)
    tr.save_folder(Path("."), _Module(), _Module(), _Module(), 1.0, {"newer": 1})
    assert json.loads((target / "zoodip_source.json").read_text()) == {"newer": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_an_output_holding_what_the_run_reads_is_refused(tmp_path, capsys):
    """--out W --work W/work (or --out W --work W) passed the checks, and the save's swap then deleted the
    checkpoints with the old --out. The README's continuation (--init-from reference/model --out reference/model
    --overwrite) still passes them: its folder is read before the training."""
    from reference import train_reference as tr

    for flags in (["--out", str(tmp_path), "--work", str(tmp_path / "work")],
                  ["--out", str(tmp_path / "w"), "--work", str(tmp_path / "w")]):
        assert tr.main(flags + ["--overwrite", "--n-images", "4", "--stop-after", "data"]) == 2
        err = capsys.readouterr().err
        assert "is the source folder or holds it" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "work").exists() and not (tmp_path / "w").exists()
    assert tr.main(["--init-from", str(MODEL), "--out", str(MODEL), "--overwrite", "--work", str(tmp_path / "ft"),
                    "--n-images", "4", "--stop-after", "data"]) == 0


@pytest.mark.skipif(not (MODEL / "unet").is_dir(), reason="reference/model is not in this checkout")
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A resumed run restarted its running loss, so its record said another loss than the same run uninterrupted; it
    ends with the uninterrupted run's weights, bit for bit."""
    from reference import train_reference as tr

    common = ["--n-images", "16", "--batch", "4", "--diffusion-steps", "6", "--checkpoint-every", "2", "--warmup", "2",
              "--vae-from", str(MODEL)]
    assert tr.main(common + ["--work", str(tmp_path / "a"), "--out", str(tmp_path / "a-out")]) == 0
    real = tr.lr_at

    def interrupted(step, *rest):
        if step == 3:  # Ctrl-C during the fourth step, after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(step, *rest)

    monkeypatch.setattr(tr, "lr_at", interrupted)
    assert tr.main(common + ["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b-out")]) == 130
    assert not (tmp_path / "b-out").exists()
    monkeypatch.setattr(tr, "lr_at", real)
    assert tr.main(common + ["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b-out")]) == 0
    losses = [json.loads((tmp_path / f"{r}-out" / "zoodip_source.json").read_text())["diffusion_loss"] for r in "ab"]
    assert losses[1] == losses[0]
    # The weights too: the latents computed fresh were channels-last and those read back from the cache C-order,
    # which took other UNet kernels, so the resumed weights differed by an fp16 step in a fifth of the tensors.
    from safetensors.numpy import load_file

    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = (load_file(tmp_path / f"{r}-out" / part) for r in "ab")
        assert [k for k in a if not (a[k] == b[k]).all()] == [], part


def test_ctrl_c_during_training_is_one_line_and_keeps_the_checkpoint(tmp_path):
    """Ctrl-C (or a kill) during the training was a KeyboardInterrupt traceback; the checkpoint stays, --out is not
    written, and one line says how to continue."""
    import signal
    import subprocess
    import time

    work, out = tmp_path / "work", tmp_path / "out"
    run = subprocess.Popen([sys.executable, "reference/train_reference.py", "--work", str(work), "--out", str(out),
                            "--n-images", "16", "--batch", "4", "--diffusion-steps", "100000", "--checkpoint-every",
                            "1", "--vae-from", str(MODEL)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 100
    while not (work / "diffusion.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    err = run.communicate(timeout=60)[1]
    assert run.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("interrupted")] == [
        f"interrupted: --out was not written; the last checkpoint in {work} is kept: rerun the same command to continue from it"]
    assert (work / "diffusion.pt").is_file() and not out.exists()


def test_a_work_folder_of_other_settings_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """A --work checkpoint made with another --batch, --n-images or start was continued without a word."""
    from reference import train_reference as tr

    work = tmp_path / "work"
    common = ["--diffusion-steps", "1", "--checkpoint-every", "1", "--warmup", "1", "--work", str(work)]
    assert tr.main(common + ["--n-images", "16", "--batch", "4", "--vae-from", str(MODEL), "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in work.iterdir())
    for other, said in ((["--n-images", "16", "--batch", "2", "--vae-from", str(MODEL)], "made with --batch 4 (this run: --batch 2)"),
                        (["--n-images", "8", "--batch", "4", "--vae-from", str(MODEL)], "made with --n-images 16 (this run: --n-images 8)"),
                        (["--n-images", "16", "--batch", "4"], "(this run: without --vae-from)")):
        assert tr.main(common + other + ["--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and said in err and "use another --work or the same flags" in err, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in work.iterdir()) == before and not (tmp_path / "b").exists()
    # The same settings spelled otherwise (a relative --vae-from), elsewhere and with other threads, continue.
    monkeypatch.chdir(MODEL.parent)
    assert tr.main(common + ["--n-images", "16", "--batch", "4", "--vae-from", MODEL.name, "--threads", "2",
                             "--checkpoint-every", "5", "--out", str(tmp_path / "b")]) == 0


@pytest.mark.skipif(not (MODEL / "unet").is_dir(), reason="reference/model is not in this checkout")
def test_a_checkpoint_from_before_the_running_loss_record_resumes(tmp_path, monkeypatch):
    """Checkpoints written before they recorded the running loss (an interrupted run of an older checkout) failed
    to resume with a KeyError traceback."""
    from reference import train_reference as tr

    flags = ["--n-images", "8", "--batch", "2", "--diffusion-steps", "3", "--checkpoint-every", "1", "--warmup", "1",
             "--vae-from", str(MODEL), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]
    real = tr.lr_at
    monkeypatch.setattr(tr, "lr_at", lambda step, *rest: (_ for _ in ()).throw(KeyboardInterrupt) if step == 2
                        else real(step, *rest))
    assert tr.main(flags) == 130
    monkeypatch.setattr(tr, "lr_at", real)
    ckpt = torch.load(tmp_path / "w" / "diffusion.pt", weights_only=True)
    del ckpt["loss"]
    torch.save(ckpt, tmp_path / "w" / "diffusion.pt")
    assert tr.main(flags) == 0
    assert json.loads((tmp_path / "out" / "zoodip_source.json").read_text())["diffusion_loss"] > 0
