"""The world evaluator at run time: NumPy + onnxruntime (no torch).

    ev = Evaluator.load()                       # reference/evaluator.onnx
    ev.predict(images)    -> {"shape": [...], "color": [...], "background": [...], "style": [...], "size": [...]}
    ev.features(images)   -> float32 [N, 128], L2-normalized (cosine similarity = dot product)

Images of any size are resized (bilinear) to the world resolution (32x32). Trained by
``reference/train_evaluator.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from . import world

DEFAULT_PATH = Path(__file__).resolve().parent / "evaluator.onnx"


class Evaluator:
    def __init__(self, session, resolution: int = world.RESOLUTION) -> None:
        self.session = session
        self.resolution = resolution

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int = 1) -> "Evaluator":
        import onnxruntime as ort

        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_file():
            raise FileNotFoundError(f"no evaluator at {path}; train it with reference/train_evaluator.py")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return cls(ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"]))

    def _batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        arrays = []
        for image in images:
            image = image.convert("RGB")
            if image.size != (self.resolution, self.resolution):
                image = image.resize((self.resolution, self.resolution), Image.BILINEAR)
            arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
        return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))

    def _run(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        if len(images) == 0:
            return [np.zeros((0, 128), np.float32)] + [np.zeros((0, len(world.ATTRIBUTES[a])), np.float32)
                                                       for a in world.ATTRIBUTE_NAMES]
        outs = [self.session.run(None, {"images": self._batch(images[i : i + 256])}) for i in range(0, len(images), 256)]
        return [np.concatenate(parts) for parts in zip(*outs)]

    def logits(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        outputs = self._run(images)
        return {a: outputs[1 + j] for j, a in enumerate(world.ATTRIBUTE_NAMES)}

    def predict(self, images: Sequence[Image.Image]) -> dict[str, list[str]]:
        return {a: [world.ATTRIBUTES[a][int(k)] for k in np.argmax(v, axis=1)] for a, v in self.logits(images).items()}

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        feats = self._run(images)[0].astype(np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)

    def accuracy(self, images: Sequence[Image.Image], targets: Sequence[dict[str, str]] | dict[str, str]) -> dict[str, float]:
        """Per-attribute fraction of ``images`` whose prediction matches ``targets`` (one dict for all, or one each)."""
        return attribute_accuracy(self.predict(images), targets)[0]


def attribute_accuracy(predicted: dict[str, list[str]], targets: Sequence[dict[str, str]] | dict[str, str],
                       ) -> tuple[dict[str, float], float]:
    """Scores of :meth:`Evaluator.predict` output against ``targets`` (one dict for all images, or one each).

    Returns the per-attribute fraction of matching images and the fraction with every attribute right.
    """
    count = len(predicted[world.ATTRIBUTE_NAMES[0]])
    if isinstance(targets, dict):
        targets = [targets] * count
    if not count:
        return {a: float("nan") for a in world.ATTRIBUTE_NAMES}, float("nan")
    hits = {a: [p == t[a] for p, t in zip(predicted[a], targets)] for a in world.ATTRIBUTE_NAMES}
    joint = float(np.mean([all(hits[a][k] for a in world.ATTRIBUTE_NAMES) for k in range(count)]))
    return {a: float(np.mean(h)) for a, h in hits.items()}, joint


__all__ = ["DEFAULT_PATH", "Evaluator", "attribute_accuracy"]
