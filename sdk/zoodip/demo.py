"""``zoodip demo``: export the built-in model, personalize it on the bundled photos, show before/after.

Until a trained reference model ships, the built-in model is a small SD-shaped network with seeded
random weights: the demo shows the whole pipeline working (export -> forward-only training ->
generation) and the evaluation loss falling; its images are not meant to look like the concept.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import ZoodipError

EXAMPLE_PHOTOS = Path(__file__).resolve().parent / "data" / "example_concept"
DEMO_TOKEN = "<striped-star>"
DEMO_INITIALIZER = "star"
DEFAULT_STEPS = 300


def _export_builtin(folder: Path, progress: bool) -> Path:
    if (folder / "manifest.json").is_file():
        return folder
    try:
        from zoodip_export.export_model import export_model
    except ImportError as exc:
        raise ZoodipError(
            f"the demo exports its built-in model with torch ({exc.name} is missing): "
            "run 'make demo', or pip install 'zoodip[export]'"
        ) from None
    export_model(None, folder, tiny=True, progress=progress)
    return folder


def run_demo(out: Path, steps: int | None = None, threads: int = 0, progress: bool = True) -> dict:
    """Run the demo into ``out``; returns a summary (also written to ``out/summary.json``)."""
    from .cli import _ProgressBar
    from .generate import generate
    from .images import image_grid, load_images, to_pil
    from .model import ExportedModel, RuntimeOptions
    from .trainer import PersonalizeConfig, personalize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    export_dir = _export_builtin(out / "model", progress)
    exported_s = time.monotonic() - started

    run_dir = out / "run"
    steps = DEFAULT_STEPS if steps is None else steps
    config = PersonalizeConfig(export_dir=export_dir, images=EXAMPLE_PHOTOS, output_dir=run_dir,
                               placeholder_token=DEMO_TOKEN, initializer_token=DEMO_INITIALIZER,
                               max_train_steps=steps, eval_every=max(1, steps // 10), checkpoint_every=max(1, steps // 5),
                               threads=threads)
    resume = (run_dir / "checkpoint.npz").is_file()
    bar = _ProgressBar(steps, enabled=progress)
    try:
        result = personalize(config, bar, resume=resume)
    finally:
        bar.close()
    trained_s = time.monotonic() - started - exported_s

    from .embeddings import load_embedding_file

    model = ExportedModel.load(export_dir, RuntimeOptions(threads=threads))
    token, vectors = load_embedding_file(result.embedding_path)
    kwargs = dict(steps=20, guidance_scale=5.0, sampler="dpmpp_2m", num_images=4)
    before = generate(model, f"a photo of a {DEMO_INITIALIZER}", seed=1, **kwargs)
    after = generate(model, f"a photo of a {token}", seed=1, added_embeddings={token: vectors}, **kwargs)
    size = before[0].size
    _, photos = load_images(EXAMPLE_PHOTOS, size[0])
    grid = image_grid([to_pil(photos[:4]), before, after])
    grid_path = out / "before_after.png"
    grid.save(grid_path)

    summary = {
        "export_dir": str(export_dir), "embedding": str(result.embedding_path), "grid": str(grid_path),
        "grid_rows": ["training photos", f"before: 'a photo of a {DEMO_INITIALIZER}'", f"after: 'a photo of a {token}'"],
        "steps": result.steps, "status": result.status,
        "eval_loss_initializer": result.initial_eval_loss, "eval_loss_final": result.final_eval_loss,
        "eval_history": result.eval_history,
        "seconds": {"export": round(exported_s, 1), "personalize": round(trained_s, 1),
                    "total": round(time.monotonic() - started, 1)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"demo: eval loss {result.initial_eval_loss:.5f} (initializer '{DEMO_INITIALIZER}') -> "
          f"{result.final_eval_loss:.5f} after {result.steps} forward-only steps", file=sys.stderr)
    print(f"demo: embedding {result.embedding_path}\ndemo: before/after grid {grid_path} "
          f"(rows: photos / before / after)\ndemo: {summary['seconds']['total']} s in all")
    return summary
