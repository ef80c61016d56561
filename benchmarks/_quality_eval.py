"""Scoring the embeddings the quality benchmark's methods learned.

Two scorers, both on the INT8 export (every method's embedding is scored by the same model):

* :class:`PlantedScorer` (the optimization-only check, any model): the fraction of the loss gap
  closed, ``(L(v0) - L(v)) / (L(v0) - L(v*))`` with ``L(v*) = 0``, on fixed (photo, noise, t,
  prompt) items whose targets are the UNet's predictions under the planted embedding ``v*``; plus
  the relative distance ``|v - v*| / |v0 - v*|``.
* :class:`WorldScorer` (the reference world): generates images with the learned token and reads them
  with the reference evaluator: concept fidelity (mean feature cosine to the concept's photos, the
  CLIP-I/DINO analogue), concept-attribute accuracy, and prompt fidelity on held-out prompts (the
  CLIP-T analogue: attribute accuracy against ``world.prompt_target``, i.e. the requested attribute
  changed and the concept's other attributes kept; also the requested attribute alone, and all five
  at once).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoodip.generate import generate
from zoodip.images import load_images
from zoodip.model import ExportedModel, RuntimeOptions
from zoodip.prompts import OBJECT_TEMPLATES
from zoodip.denoising_loss import DenoisingLoss


class PlantedScorer:
    def __init__(self, export_dir: Path, photos: Path, placeholder: str, v_star: np.ndarray, seed: int = 0,
                 timesteps_per_photo: int = 4) -> None:
        self.model = ExportedModel.load(export_dir, RuntimeOptions(threads=1))
        model = self.model
        self.placeholder_id = model.tokenizer.add_placeholder(placeholder)[0]
        self.v_star = np.asarray(v_star, np.float32)
        _, images = load_images(photos, model.default_resolution)
        rng = np.random.default_rng([seed, 0xE7A1])
        latents = np.concatenate([model.vae_encode(images[i : i + 1]) for i in range(len(images))])
        model.release("vae_encoder")
        T = model.schedule.num_train_timesteps
        # Stratified timesteps over the whole schedule: the check scores the full objective, not
        # only the range a method trains on.
        grid = (np.arange(timesteps_per_photo) + 0.5) / timesteps_per_photo * T
        self.loss = DenoisingLoss(model, self.placeholder_id)
        self.items = []
        for i, x0 in enumerate(latents):
            for j, t in enumerate(grid.astype(int)):
                noise = rng.standard_normal(x0.shape).astype(np.float32)
                x_t = model.schedule.add_noise(x0[None], noise[None], np.array([t]))[0].astype(np.float32)
                prompt = OBJECT_TEMPLATES[(i * timesteps_per_photo + j) % len(OBJECT_TEMPLATES)].format(placeholder)
                ids = model.tokenizer(prompt)[0]
                cond = model.text_encoder(self.loss.text_inputs(ids, self.v_star[None]))
                target = model.unet(x_t[None], np.full(1, t, np.float32), cond)[0]
                self.items.append((ids, x_t, int(t), target))
        self._v0: np.ndarray | None = None
        self._l0: float | None = None

    def objective(self, v: np.ndarray) -> float:
        v = np.asarray(v, np.float32)[None]
        return float(np.mean([self.loss(ids, v, x_t, t, target)[0] for ids, x_t, t, target in self.items]))

    def score(self, v: np.ndarray, v0: np.ndarray) -> dict[str, float]:
        if self._v0 is None or not np.array_equal(self._v0, v0):
            self._v0, self._l0 = np.asarray(v0, np.float32).copy(), self.objective(v0)
        loss = self.objective(v)
        gap = float(self._l0)  # L(v*) = 0 by construction
        dist0 = float(np.linalg.norm(self._v0 - self.v_star))
        return {
            "loss": loss,
            "gap_closed": (gap - loss) / gap if gap > 0 else 0.0,
            "rel_distance": float(np.linalg.norm(np.asarray(v, np.float32) - self.v_star)) / dist0 if dist0 else 0.0,
        }


def _attr_dict(attrs: Any) -> dict[str, str]:
    if isinstance(attrs, dict):
        return {str(k): str(v) for k, v in attrs.items()}
    if hasattr(attrs, "as_dict"):
        return {str(k): str(v) for k, v in attrs.as_dict().items()}
    return {k: str(v) for k, v in vars(attrs).items()}


class WorldScorer:
    """Generate with the learned token, then read the images with the reference evaluator."""

    def __init__(self, export_dir: Path, evaluator: Any, world: Any, *, images_per_prompt: int = 4,
                 sampler_steps: int = 20, guidance: float = 5.0, seed: int = 0,
                 fidelity_prompt: str = "a photo of {}", max_heldout: int | None = None) -> None:
        self.model = ExportedModel.load(export_dir, RuntimeOptions(threads=1))
        self.evaluator = evaluator
        self.world = world
        self.images_per_prompt = images_per_prompt
        self.sampler_steps = sampler_steps
        self.guidance = guidance
        self.seed = seed
        self.fidelity_prompt = fidelity_prompt
        self.max_heldout = max_heldout
        self._ref_cache: dict[tuple[str, str], np.ndarray] = {}  # (concept, digest of its photos)

    def _generate(self, prompt: str, token: str, v: np.ndarray, seed: int) -> list:
        # A snapshot holds the token's vectors flattened (several with num_vectors): generate() adds the token
        # with as many ids as it has rows, and the prompt's token expands to all of them.
        vectors = np.asarray(v, np.float32).reshape(-1, self.model.hidden_size)
        return generate(self.model, prompt.format(token), steps=self.sampler_steps, guidance_scale=self.guidance,
                        sampler="dpmpp_2m", seed=seed, num_images=self.images_per_prompt,
                        added_embeddings={token: vectors})

    def reference_features(self, concept: Any, reference_images: Sequence) -> np.ndarray:
        # Keyed by the photos too: a run over several training seeds scores each job against its own photos
        # (until 2026-12-03 every seed's job against the first seed's; results.json's meta.concept_refs says which).
        digest = hashlib.sha256()
        for image in reference_images:  # a digest, not the photos' bytes, as the cache key
            digest.update(np.ascontiguousarray(image).tobytes())
        key = (concept.name, digest.hexdigest())
        if key not in self._ref_cache:
            self._ref_cache[key] = np.asarray(self.evaluator.features(list(reference_images)), np.float64)
        return self._ref_cache[key]

    def heldout_prompts(self, concept: Any) -> list[str]:
        prompts = list(concept.held_out_prompts)
        return prompts if self.max_heldout is None else prompts[: self.max_heldout]

    def score(self, concept: Any, token: str, v: np.ndarray | None, reference_images: Sequence,
              keep_images: bool = False, resolution: int | None = None, heldout: bool = True,
              seed: int | None = None) -> dict[str, Any]:
        """Metrics of embedding ``v``; ``v=None`` scores the world's own renders instead (the oracle:
        what a perfect generator would get, i.e. the evaluator's own ceiling). ``seed``: of the generation
        noise (default: the scorer's)."""
        seed = self.seed if seed is None else seed
        concept_attrs = _attr_dict(concept.attributes)
        n = self.images_per_prompt
        res = resolution or self.model.default_resolution

        def oracle(attrs: dict[str, str], seed: int) -> list:
            rng = np.random.default_rng([seed, 0x0AC1E])
            return [self.world.render(self.world.Attributes(**attrs), rng, res) for _ in range(n)]

        images = self._generate(self.fidelity_prompt, token, v, seed) if v is not None else oracle(concept_attrs, seed)
        feats = np.asarray(self.evaluator.features(images), np.float64)
        ref = self.reference_features(concept, reference_images)
        fidelity = float(np.mean(feats @ ref.T))
        predicted = self.evaluator.predict(images)
        hits = [predicted[a][k] == concept_attrs[a] for a in concept_attrs if a in predicted
                for k in range(len(images))]
        attr_acc = float(np.mean(hits)) if hits else float("nan")

        joint: list[bool] = []
        requested: list[bool] = []
        soft: list[float] = []
        for p, prompt in enumerate(self.heldout_prompts(concept) if heldout else []):
            target = _attr_dict(self.world.prompt_target(concept, prompt))
            changed = [a for a in target if target[a] != concept_attrs.get(a)] or list(target)
            out = self._generate(prompt, token, v, seed + 1 + p) if v is not None else oracle(target, seed + 1 + p)
            pred = self.evaluator.predict(out)
            for k in range(len(out)):
                requested.append(all(pred[a][k] == target[a] for a in changed if a in pred))
                hits = [pred[a][k] == target[a] for a in target if a in pred]
                joint.append(all(hits))
                soft.append(float(np.mean(hits)))
        result: dict[str, Any] = {
            "concept_fidelity": fidelity,
            "attribute_acc": attr_acc,
            "prompt_fidelity": float(np.mean(soft)) if soft else None,
            "prompt_requested_acc": float(np.mean(requested)) if requested else None,
            "prompt_joint_acc": float(np.mean(joint)) if joint else None,
        }
        if keep_images:
            result["_images"] = images
        return result
