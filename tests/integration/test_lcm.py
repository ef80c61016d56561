"""The lcm sampler (latent consistency models, such as SD1.5 with the LCM-LoRA fused in) against diffusers'
LCMScheduler: its timesteps, its steps on a fixed model with the same per-step noise, and generate() end to end on
the tiny SD folder against StableDiffusionPipeline / StableDiffusionImg2ImgPipeline with an LCMScheduler."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.integrity import file_sha256
from zoodip.samplers import lcm_timesteps, sample_lcm
from zoodip.sampling import sampler_notes

from cli_helpers import assert_one_line_error, run_cli
from test_samplers import SHAPE, FakeModel, fake_model, noise, rel_err, sd_alphas_cumprod

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LCM_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  set_alpha_to_one=True, steps_offset=1, clip_sample=False)


@pytest.mark.parametrize("original_steps", [50, 20])
def test_lcm_timesteps_are_lcm_schedulers(original_steps: int) -> None:
    for steps in range(1, original_steps + 1):
        scheduler = schedulers.LCMScheduler(**LCM_CONFIG, original_inference_steps=original_steps)
        scheduler.set_timesteps(steps)
        np.testing.assert_array_equal(lcm_timesteps(1000, steps, original_steps), scheduler.timesteps.numpy())
    np.testing.assert_array_equal(lcm_timesteps(1000, 4), [999, 759, 499, 259])
    with pytest.raises(ZoodipError, match=f"lcm sampler takes 1 to {original_steps} steps"):
        lcm_timesteps(1000, original_steps + 1, original_steps)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
# At SD's timestep_scaling 10, c_skip is below 1e-5 from t = 19 on: a small scaling makes the boundary terms count.
@pytest.mark.parametrize("steps,scaling", [(1, 10.0), (4, 10.0), (8, 10.0), (50, 0.05)])
def test_lcm_matches_lcm_scheduler_with_the_same_noise(prediction_type: str, steps: int, scaling: float) -> None:
    scheduler = schedulers.LCMScheduler(**LCM_CONFIG, prediction_type=prediction_type, timestep_scaling=scaling)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(11)
    x = torch.from_numpy(noise())
    for t in scheduler.timesteps:
        out = torch.from_numpy(fake_model(x.numpy(), float(t)))
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    # diffusers draws one standard normal of the latents' shape per step but the last: the same draws, replayed.
    generator = torch.Generator().manual_seed(11)
    draws = [torch.randn(SHAPE, generator=generator).numpy() for _ in range(steps - 1)]

    class Replay:
        def standard_normal(self, shape, dtype):  # the one Generator method the sampler uses
            assert tuple(shape) == SHAPE and dtype == np.float32
            return draws.pop(0)

    seen: list[float] = []
    ours = sample_lcm(fake_model, noise(), sd_alphas_cumprod(), lcm_timesteps(1000, steps), prediction_type,
                      rng=Replay(), timestep_scaling=scaling,  # type: ignore[arg-type]
                      callback=lambda i, t, latents: seen.append(t))
    assert draws == [] and seen == [float(t) for t in scheduler.timesteps]
    assert rel_err(ours, x.numpy()) < 1e-5


def test_lcm_steps_and_settings_are_checked_before_any_work() -> None:
    model = FakeModel()
    with pytest.raises(ZoodipError, match="steps must be an integer from 1 to 50 for the lcm sampler"):
        generate(model, "a dog", sampler="lcm", steps=60)
    assert model.text_calls == [] and model.unet_batches == []
    model.scheduler_config = dict(model.scheduler_config, original_inference_steps="50")
    with pytest.raises(ZoodipError, match="config's original_inference_steps, which must be an integer from 1"):
        generate(model, "a dog", sampler="lcm", steps=4)
    model.scheduler_config = dict(model.scheduler_config, original_inference_steps=8, timestep_scaling=float("nan"))
    with pytest.raises(ZoodipError, match="config's timestep_scaling, which must be a number from 1e-3 to 1e3"):
        generate(model, "a dog", sampler="lcm", steps=4)
    model.scheduler_config["timestep_scaling"] = 10
    assert len(generate(model, "a dog", sampler="lcm", steps=8, guidance_scale=1.0)) == 1
    assert model.unet_batches == [1] * 8  # guidance 1: the prompt's pass alone


def test_sampler_notes_say_what_an_lcm_model_is_made_for() -> None:
    model = FakeModel()
    assert sampler_notes(model, "dpmpp_2m", 7.5) == [] and sampler_notes(model, "lcm", 1.5) == []
    assert "guidance scale of 1 to 2" in sampler_notes(model, "lcm", 7.5)[0]
    model.scheduler_config = dict(model.scheduler_config, _class_name="LCMScheduler")
    assert "made for sampler='lcm', steps=4, guidance_scale=1" in sampler_notes(model, "euler", 1.0)[0]


@pytest.mark.slow
def test_generate_with_lcm_matches_the_diffusers_pipelines(tiny_sd_folder, tmp_path, monkeypatch) -> None:
    """Text-to-image and image-to-image on the tiny SD folder (fp32 export): the same start noise, per-step noise and
    (image-to-image) posterior mean on both sides; diffusers' img2img keeps the last int(steps * strength) steps."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img
    from diffusers.schedulers import scheduling_lcm
    from PIL import Image

    from test_samplers import fp32_export_and_pipeline

    model, pipe = fp32_export_and_pipeline(tiny_sd_folder, tmp_path, monkeypatch, StableDiffusionPipeline)
    pipe.scheduler = schedulers.LCMScheduler.from_config(pipe.scheduler.config)
    side = model.sample_size * model.vae_scale_factor
    shape = (2, model.latent_channels, model.sample_size, model.sample_size)
    start = Image.fromarray(np.random.default_rng(4).integers(0, 256, (side, side, 3), dtype=np.uint8))
    for strength in (None, 0.6):
        rng = np.random.default_rng(3)  # generate(seed=3)'s: the start noise, then (img2img) none, then each step's
        start_noise = rng.standard_normal(shape, dtype=np.float32)
        run = 6 if strength is None else int(6 * strength)  # diffusers' img2img keeps the last int(steps * strength)
        draws = [rng.standard_normal(shape, dtype=np.float32) for _ in range(run - 1)]
        monkeypatch.setattr(scheduling_lcm, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(draws.pop(0)))
        kwargs = dict(negative_prompt="blurry", guidance_scale=1.5, num_images_per_prompt=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if strength is None:
                ref = pipe("a photo of a star", num_inference_steps=6, latents=torch.from_numpy(start_noise),
                           output_type="np", **kwargs).images
            else:
                i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
                i2i.set_progress_bar_config(disable=True)
                monkeypatch.setattr(img2img, "retrieve_latents", lambda output, generator=None: output.latent_dist.mean)
                monkeypatch.setattr(img2img, "randn_tensor", lambda shape, **kw: torch.from_numpy(start_noise))
                ref = i2i("a photo of a star", image=start, strength=strength, num_inference_steps=6, output_type="np",
                          **kwargs).images
        assert draws == []  # one per step but the last, as generate draws them from its seed
        ours = generate(model, "a photo of a star", steps=6, sampler="lcm", seed=3, num_images=2,
                        negative_prompt="blurry", guidance_scale=1.5,
                        **({} if strength is None else {"image": start, "strength": strength}))
        diff = np.abs(np.stack([np.asarray(im) for im in ours]).astype(int) - (ref * 255).round().astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (strength, diff.max(), diff.mean())


def test_export_refuses_a_unet_with_a_guidance_embedding(tiny_sd_folder, tmp_path, capsys) -> None:
    distilled = tmp_path / "lcm-distilled"
    shutil.copytree(tiny_sd_folder, distilled)
    config_path = distilled / "unet" / "config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), time_cond_proj_dim=256)))
    out = tmp_path / "out"
    code, _, err = run_cli(["export", distilled, out, "--quiet"], capsys)
    assert_one_line_error(code, err, "takes a guidance-scale embedding")
    assert "--sampler lcm" in err and not out.exists()


def test_lcm_notes_come_after_the_checks_and_through_the_api(tiny_export, tmp_path, capsys) -> None:
    base = ["generate", "--model", tiny_export, "--prompt", "a red star", "--sampler", "lcm", "--out", tmp_path / "a.png"]
    code, _, err = run_cli([*base, "--guidance-scale", "200"], capsys)  # refused: no note before the error line
    assert_one_line_error(code, err, "--guidance-scale")
    code, _, err = run_cli([*base, "--steps", "60", "--guidance-scale", "7"], capsys)
    assert_one_line_error(code, err, "--steps must be an integer from 1 to 50 for the lcm sampler")
    code, _, err = run_cli([*base, "--steps", "4", "--hires-scale", "1.5", "--hires-steps", "60"], capsys)
    assert_one_line_error(code, err, "--hires-steps must be an integer from 1 to 50 for the lcm sampler")
    code, _, err = run_cli([*base, "--steps", "2", "--guidance-scale", "7", "--hires-scale", "1.5"], capsys)
    assert code == 0 and err.count("warning: ") == 1 and "guidance scale of 1 to 2" in err  # once for both passes
    from zoodip.model import ExportedModel

    with pytest.warns(UserWarning, match="guidance scale of 1 to 2"):
        generate(ExportedModel.load(tiny_export), "a red star", sampler="lcm", steps=2, guidance_scale=7.0)


@pytest.mark.parametrize("config,needle", [
    ({"timestep_scaling": 1e160}, "timestep_scaling, which must be a number from 1e-3 to 1e3"),
    ({"original_inference_steps": 5000}, "original_inference_steps, which must be an integer from 1 to the")])
def test_lcm_settings_out_of_range_are_one_line(tiny_export, tmp_path, capsys, config, needle) -> None:
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    path = export / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **config)))
    manifest = json.loads((export / "manifest.json").read_text())  # the file's size and hash, as changed here
    manifest["files"]["scheduler_config.json"] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    (export / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["generate", "--model", export, "--prompt", "a red star", "--sampler", "lcm", "--steps", "4",
                            "--out", tmp_path / "a.png"], capsys)
    assert_one_line_error(code, err, needle)


def test_scheduler_settings_no_sampler_applies_are_said() -> None:
    model = FakeModel()
    model.scheduler_config = dict(model.scheduler_config, clip_sample=True, thresholding=True)
    assert "asks for clip_sample and thresholding, which zoodip's lcm sampler does not apply" in sampler_notes(model, "lcm")[0]
    model.scheduler_config = dict(model.scheduler_config, clip_sample=False, thresholding=False, solver_order=3)
    assert sampler_notes(model, "lcm") == [] and "asks for solver_order 3" in sampler_notes(model, "dpmpp_2m_sde")[0]


def test_a_dpm_solver_config_saved_with_karras_sigmas_or_the_sde_says_the_sampler_that_has_them() -> None:
    model = FakeModel()  # a config saved from DPMSolverMultistepScheduler(use_karras_sigmas=True, "sde-dpmsolver++")
    model.scheduler_config = dict(model.scheduler_config, use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")
    assert sampler_notes(model, "dpmpp_2m_sde_karras") == []
    note = sampler_notes(model, "dpmpp_2m")[0]
    assert ("asks for use_karras_sigmas True (sampler='dpmpp_2m_karras' has them) and algorithm_type "
            "'sde-dpmsolver++' (sampler='dpmpp_2m_sde' is it), which zoodip's dpmpp_2m sampler does not apply") in note
    assert "algorithm_type 'sde-dpmsolver++' (sampler='dpmpp_2m_sde_karras' is it)" in sampler_notes(
        model, "dpmpp_2m_karras")[0]
    # Euler's diffusers scheduler takes Karras sigmas, which zoodip's euler lacks; Euler a's, DDIM's and LCM's do not
    # take them (a sweep found them said there, and euler sent to another sampler)
    model.scheduler_config = dict(model.scheduler_config, algorithm_type="sde-dpmsolver++")
    assert "asks for use_karras_sigmas True, which zoodip's euler" in sampler_notes(model, "euler")[0]
    assert [sampler_notes(model, name) for name in ("euler_a", "ddim", "lcm")] == [[], [], []]
    model.scheduler_config = dict(model.scheduler_config, use_karras_sigmas=False, algorithm_type="dpmsolver",
                                  use_beta_sigmas=True)
    assert "algorithm_type 'dpmsolver', " in sampler_notes(model, "dpmpp_2m")[0]
    assert "use_beta_sigmas True and algorithm_type 'dpmsolver'," in sampler_notes(model, "dpmpp_2m")[0]
    # Any value diffusers' `if config.use_karras_sigmas:` takes as true (a hand-edited 1 or "true"), said with it
    model.scheduler_config = dict(model.scheduler_config, use_beta_sigmas=0, use_karras_sigmas=1, use_flow_sigmas="true",
                                  algorithm_type="dpmsolver++", clip_sample=1)
    assert ("asks for clip_sample and use_karras_sigmas 1 (sampler='dpmpp_2m_karras' has them) and use_flow_sigmas "
            "'true', which zoodip's dpmpp_2m sampler") in sampler_notes(model, "dpmpp_2m")[0]
