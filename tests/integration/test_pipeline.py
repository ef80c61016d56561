"""``zoodip.pipeline.ZoodipPipeline``: diffusers' calls over the tiny export, each the same as generate()'s."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from zoodip.embeddings import save_learned_embeds
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.pipeline import ZoodipPipeline


@pytest.fixture()
def pipe(tiny_export):
    return ZoodipPipeline.from_pretrained(tiny_export)


def _embedding(tmp_path, name: str, token: str, hidden: int, seed: int = 0):
    vectors = np.random.default_rng(seed).standard_normal((1, hidden)).astype(np.float32)
    return save_learned_embeds(tmp_path / name, token, vectors), vectors


def test_a_call_is_generate_under_diffusers_names(pipe, tmp_path) -> None:
    path, vectors = _embedding(tmp_path, "learned_embeds.safetensors", "<cat-toy>", pipe.model.hidden_size)
    pipe.load_textual_inversion(path)
    out = pipe("a photo of <cat-toy>", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0, seed=4,
               num_images_per_prompt=2, height=64, width=96, sampler="euler")
    ours = generate(pipe.model, "a photo of <cat-toy>", negative_prompt="blurry", steps=3, guidance_scale=5.0, seed=4,
                    num_images=2, height=64, width=96, sampler="euler", added_embeddings={"<cat-toy>": vectors})
    assert [np.asarray(image).tolist() for image in out.images] == [np.asarray(image).tolist() for image in ours]
    as_np = pipe("a photo of <cat-toy>", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0, seed=4,
                 num_images_per_prompt=2, height=64, width=96, sampler="euler", output_type="np").images
    assert as_np.shape == (2, 64, 96, 3) and as_np.dtype == np.float32
    assert np.array_equal(as_np, np.stack([np.asarray(image) for image in ours]) / np.float32(255.0))


def test_load_textual_inversion_renames_lists_and_refuses_a_name_twice(pipe, tmp_path) -> None:
    hidden = pipe.model.hidden_size
    a, _ = _embedding(tmp_path, "a.safetensors", "<a>", hidden)
    b, _ = _embedding(tmp_path, "b.safetensors", "<b>", hidden, seed=1)
    pipe.load_textual_inversion([a, b], token=["<x>", "<y:z>"])  # a colon in a token: never read as PATH:TOKEN
    assert sorted(pipe._added) == ["<x>", "<y:z>"]
    with pytest.raises(ZoodipError, match="got 2 files and 1 tokens"):
        pipe.load_textual_inversion([a, b], token=["<q>"])
    with pytest.raises(ZoodipError, match="an embedding named '<x>' is already loaded"):
        pipe.load_textual_inversion(b, token="<x>")
    pipe.load_textual_inversion(a)  # the refused calls added nothing
    assert sorted(pipe._added) == ["<a>", "<x>", "<y:z>"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loaded for many prompts: one a prompt leaves out is not warned of
        pipe("a photo of <x>", num_inference_steps=2)


@pytest.mark.parametrize("call, words", [
    (dict(generator=object()), "does not take generator=: pass seed=INT"),
    (dict(callback_on_step_end=print), r"pass callback= \(the pipeline's: diffusers' callback\(step, timestep, latents\)"),
    (dict(callback=print, callback_steps=0), "callback_steps must be a positive integer"),
    (dict(callback=3), "callback must be callable as callback"),
    (dict(prompt_embeds=np.zeros(3)), "pass the prompt's text"),
    (dict(num_inference_step=3), "does not take num_inference_step=: it takes"),
    (dict(output_type="latent"), "output_type must be one of pil, np"),
    (dict(prompt=["a", "b"]), "one prompt per call here"),
    (dict(num_inference_steps=0), "steps must be an integer"),
    (dict(negative_prompt=["blurry"]), "negative_prompt must be one string"),
    (dict(hires_steps=4), "add hires_scale=X"),
    (dict(hires_scale=2, strength=0.5), "the hires fix is for text-to-image"),
    (dict(clip_skip=""), "clip_skip"),
])
def test_what_diffusers_users_pass_that_has_no_place_here_is_one_line(pipe, call, words) -> None:
    call = {"prompt": "a star", "num_inference_steps": 2, **call}
    with pytest.raises(ZoodipError, match=words):
        pipe(**call)


def test_a_call_without_a_prompt_is_one_line(pipe) -> None:
    """diffusers' prompt_embeds= stands in for the prompt: without one it was Python's TypeError (missing 'prompt')."""
    with pytest.raises(ZoodipError, match="pass the prompt's text"):
        pipe(prompt_embeds=np.zeros(3), num_inference_steps=2)
    with pytest.raises(ZoodipError, match="prompt"):
        pipe(num_inference_steps=2)


def test_from_pretrained_refuses_a_diffusers_folder_and_options_it_lacks(tiny_sd_folder, tiny_export) -> None:
    with pytest.raises(ZoodipError, match="is a diffusers folder: export it first with 'zoodip export"):
        ZoodipPipeline.from_pretrained(tiny_sd_folder)
    with pytest.raises(ZoodipError, match="does not take torch_dtype=: the export's precision was chosen"):
        ZoodipPipeline.from_pretrained(tiny_export, torch_dtype="float16")


def test_hires_settings_run_the_hires_fix(pipe) -> None:
    images = pipe("a star", num_inference_steps=3, hires_scale=1.5).images
    assert images[0].size == (192, 192)


def test_diffusers_habits_around_the_call(pipe, tmp_path) -> None:
    with pytest.raises(ZoodipError, match="pass the settings after the prompt by name"):
        pipe("a star", 512)  # diffusers' second positional argument is height
    assert pipe.to("cpu") is pipe
    with pytest.raises(ZoodipError, match="runs on the CPU"):
        pipe.to("cuda")
    path, _ = _embedding(tmp_path, "a.safetensors", "<a>", pipe.model.hidden_size)
    with pytest.raises(ZoodipError, match="does not take weight_name=: pass the embedding file's own path"):
        pipe.load_textual_inversion(tmp_path, weight_name="a.safetensors")
    with pytest.raises(ZoodipError, match="takes a file's path"):
        pipe.load_textual_inversion({"<a>": path})
    pipe.load_textual_inversion(path)
    pipe.unload_textual_inversion()
    pipe.load_textual_inversion(path)  # not "two embeddings are named '<a>'"
    for bad in (None, ""):
        with pytest.raises(ZoodipError, match="takes the path of a zoodip export folder"):
            ZoodipPipeline.from_pretrained(bad)


def test_diffusers_pipeline_methods_and_attributes_say_what_to_do(pipe) -> None:
    """diffusers' memory switches, scheduler swaps and components: one line each, not an AttributeError traceback;
    an assignment that would change nothing (pipe.scheduler = ...) is refused, not silently kept."""
    for call, words in ((lambda: pipe.enable_attention_slicing(), "memory_budget_mb=MB"),
                        (lambda: pipe.enable_model_cpu_offload(), "memory_budget_mb=MB"),
                        (lambda: pipe.scheduler.config, "pipe.sampler = 'dpmpp_2m_karras'"),
                        (lambda: pipe.unet, "pipe.model.unet"),
                        (lambda: setattr(pipe, "scheduler", object()), "has no scheduler to set: the sampler is"),
                        (lambda: setattr(pipe, "safety_checker", object()), "has no safety checker to set"),
                        (lambda: pipe.components, "pipe.model's"), (lambda: pipe.config, "pipe.model.manifest"),
                        (lambda: pipe.dtype, "zoodip export --recipe"), (lambda: pipe.save_pretrained("x"), "copy it"),
                        (lambda: setattr(pipe, "sampler", "k_euler"), "sampler must be one of dpmpp_2m"),
                        (lambda: setattr(pipe, "model", "tiny"), "model must be an ExportedModel"),
                        (lambda: pipe.to("cpu", dtype="float16"), "precision was chosen by 'zoodip export")):
        with pytest.raises(ZoodipError, match=words):
            call()
    assert not hasattr(pipe, "scheduler") and not hasattr(pipe, "anything")
    pipe.safety_checker, pipe.requires_safety_checker = None, False  # diffusers' way to turn one off: already so
    assert pipe.safety_checker is None and pipe.requires_safety_checker is False
    pipe.set_progress_bar_config(disable=True)  # accepted: the API draws no bar
    assert pipe.device == "cpu" and pipe.to("CPU") is pipe and pipe.to(device="cpu:0") is pipe
    pipe.sampler = "euler"
    assert np.array_equal(np.asarray(pipe("a star", num_inference_steps=2, seed=0).images[0]),
                          np.asarray(generate(pipe.model, "a star", steps=2, sampler="euler")[0]))


def test_a_pipeline_pickled_or_deep_copied_opens_its_export_again(pipe) -> None:
    """multiprocessing pickles what it sends to a worker; copy.deepcopy copies: the export is opened again from its
    folder (onnxruntime's sessions cannot be copied), with the same options, embeddings and sampler."""
    import copy
    import pickle

    pipe.sampler = "euler"
    reference = np.asarray(pipe("a star", num_inference_steps=2, seed=0).images[0])
    for twin in (pickle.loads(pickle.dumps(pipe)), copy.deepcopy(pipe)):
        assert twin.model is not pipe.model and twin.model.folder == pipe.model.folder
        assert twin.model.options == pipe.model.options and twin.sampler == "euler"
        assert np.array_equal(np.asarray(twin("a star", num_inference_steps=2, seed=0).images[0]), reference)


def test_a_folders_skipped_file_is_warned_of_once_not_at_every_later_load(pipe, tmp_path) -> None:
    folder = tmp_path / "embeddings"
    folder.mkdir()
    _embedding(folder, "good.safetensors", "<good>", pipe.model.hidden_size)
    (folder / "old.pt").write_bytes(b"\x80\x02 a pickle")
    with pytest.warns(UserWarning, match="skipped old.pt"):
        pipe.load_textual_inversion(folder)
    later, _ = _embedding(tmp_path, "later.safetensors", "<later>", pipe.model.hidden_size, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.load_textual_inversion(later)
    assert sorted(pipe._added) == ["<good>", "<later>"]
    pipe.unload_textual_inversion()


def test_a_copy_reopens_the_export_it_was_opened_on_or_says_it_changed(tiny_export, tmp_path, monkeypatch) -> None:
    import pickle
    import shutil

    shutil.copytree(tiny_export, tmp_path / "export")
    monkeypatch.chdir(tmp_path)
    pipe = ZoodipPipeline.from_pretrained("export")  # relative: a worker started elsewhere still finds it
    monkeypatch.chdir("/")
    data = pickle.dumps(pipe)
    assert pickle.loads(data).model.identity == pipe.model.identity
    manifest = tmp_path / "export" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 1', '"format_version": 1 '))
    with pytest.raises(ZoodipError, match="changed since the model was opened: open it again"):
        pickle.loads(data)


def test_diffusers_guidance_scale_at_most_one_is_the_prompt_alone(pipe) -> None:
    def image(**call):
        return np.asarray(pipe("a red circle", negative_prompt="a blue square", num_inference_steps=2, seed=1,
                               **call).images[0])
    alone = image(guidance_scale=1.0)
    for scale in (0.0, 0.5, -1, np.float32(0.3)):  # diffusers: no guidance, the negative prompt unused
        assert np.array_equal(image(guidance_scale=scale), alone)
    assert not np.array_equal(image(guidance_scale=3.0), alone)


def test_diffusers_callback_gets_the_step_from_0_and_the_timestep_every_callback_steps(pipe, tiny_export) -> None:
    from zoodip.sampling import sampling_plan

    calls: list[tuple[int, float, tuple]] = []
    pipe("a star", num_inference_steps=5, seed=2, sampler="euler",
         callback=lambda step, t, latents: calls.append((step, float(t), latents.shape)))
    timesteps = sampling_plan(pipe.model, "euler", 5).timesteps
    assert [(step, t) for step, t, _ in calls] == [(i, float(timesteps[i])) for i in range(5)]
    calls.clear()
    pipe("a star", num_inference_steps=5, seed=2, callback=lambda step, t, latents: calls.append((step, t, None)),
         callback_steps=2)
    assert [step for step, _, _ in calls] == [0, 2, 4]
    calls.clear()
    photo = pipe("a star", num_inference_steps=2, seed=2).images[0]  # image-to-image: the last half's timesteps
    pipe("a star", image=photo, strength=0.5, num_inference_steps=6, seed=2, sampler="euler",
         callback=lambda step, t, latents: calls.append((step, float(t), None)))
    assert [t for _, t, _ in calls] == [float(t) for t in sampling_plan(pipe.model, "euler", 6).timesteps[3:]]
    calls.clear()  # the hires fix: the first pass's steps, then each image's second pass's
    pipe("a star", num_inference_steps=3, seed=2, sampler="euler", hires_scale=1.5, hires_strength=0.5,
         hires_steps=4, num_images_per_prompt=2, callback=lambda step, t, latents: calls.append((step, float(t), None)))
    first, second = sampling_plan(pipe.model, "euler", 3).timesteps, sampling_plan(pipe.model, "euler", 4).timesteps[2:]
    assert [step for step, _, _ in calls] == list(range(7))
    assert [t for _, t, _ in calls] == [float(t) for t in [*first, *second, *second]]


def test_without_a_seed_a_call_draws_one_and_says_it(pipe) -> None:
    first, second = pipe("a star", num_inference_steps=2), pipe("a star", num_inference_steps=2)
    assert first.seed != second.seed and first.nsfw_content_detected is None
    again = pipe("a star", num_inference_steps=2, seed=first.seed)
    assert again.seed == first.seed
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))
    assert not np.array_equal(np.asarray(second.images[0]), np.asarray(first.images[0]))


def test_unload_textual_inversion_forgets_the_named_tokens_as_diffusers(pipe, tmp_path) -> None:
    from zoodip.embeddings import save_a1111_embedding

    hidden = pipe.model.hidden_size
    a, _ = _embedding(tmp_path, "a.safetensors", "<a>", hidden)
    b, _ = _embedding(tmp_path, "b.safetensors", "<b>", hidden, seed=1)
    c = save_a1111_embedding(tmp_path / "cstyle.safetensors", "cstyle", np.ones((1, hidden), np.float32))
    pipe.load_textual_inversion([a, b, c])
    assert sorted(pipe._added) == ["<a>", "<b>", "<cstyle>", "cstyle"]
    pipe.unload_textual_inversion("<a>")
    pipe.unload_textual_inversion(["cstyle"])  # an A1111 file's two names: both gone
    assert sorted(pipe._added) == ["<b>"]
    with pytest.raises(ZoodipError, match=r"no embedding named '<a>' is loaded \(loaded: <b>\)"):
        pipe.unload_textual_inversion("<a>")
    with pytest.raises(ZoodipError, match="takes a token or a list of tokens"):
        pipe.unload_textual_inversion(3)
    with pytest.raises(ZoodipError, match="does not take text_encoder=: the export's text encoder is used"):
        pipe.unload_textual_inversion("<b>", text_encoder=object())
    pipe.unload_textual_inversion("<b>", tokenizer=None, text_encoder=None)
    assert pipe._added == {}
