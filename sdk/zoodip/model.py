"""An exported model folder, opened as onnxruntime sessions.

``ExportedModel.load(folder)`` validates the manifest and files (see docs/export-format.md) and
opens each graph lazily, so a training run never loads the VAE decoder and can release the VAE
encoder once the photos are encoded. Sessions get the options the export recipe asks for: for the
W4A32 (default) and W8A32 recipes those keep the weights 4-bit or int8 *and* the arithmetic smooth enough
for finite differences (no activation quantization, no folding weights back to fp32).
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .curvature import CurvatureSubspace
from .errors import ZoodipError
from .heap import limit_heap_arenas, return_large_blocks, trim_heap  # noqa: F401  (re-exported for callers)
from .image_side import check_model_side, sd_unet_side_multiple, unet_side_multiple
from .integrity import file_identity, file_sha256, verify_files  # noqa: F401  (file_sha256: re-exported for callers)
from .paths import check_utf8_path
from .manifest import (FORMAT, FORMAT_VERSION, GRAPHS, MANIFEST, latent_scale_problem,  # noqa: F401 (public here)
                       manifest_file, read_manifest)
from .runtime_options import (DEFAULT_SPIN_WAIT, RuntimeOptions, apply_export_session,  # noqa: F401 (public here)
                              check_recipe_kept, check_runtime_options)
from .schedule import NoiseSchedule
from .tokenizer import CLIPTokenizer
from .json_text import parse_json

# These graphs run without onnxruntime's CPU arena, with or without a memory budget (``session_options``).
RUN_ONCE_PER_IMAGE = ("vae_decoder",)


# A run with these options shrinks onnxruntime's CPU arena when it ends (its free regions go back to the system).
_RELEASE_ARENA = ort.RunOptions()
_RELEASE_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

# What generation reads of a model: an ExportedModel has it all (a stand-in with the same interface may be passed).
CLOSED = ("this model was closed (close()): open the export again to use it (ExportedModel.load, or "
          "ZoodipPipeline.from_pretrained for a pipeline)")
MODEL_INTERFACE = ("tokenizer", "schedule", "encode_text", "unet", "vae_decode", "latent_channels", "hidden_size")


def check_model(model: object) -> None:
    """Refuse what is not a loaded model (a path, None) in one line rather than an AttributeError inside."""
    if isinstance(model, (str, bytes, os.PathLike)):
        raise ZoodipError(f"model must be a loaded model, got the path {os.fsdecode(model)!r}: pass "
                          "ExportedModel.load(path)")
    if getattr(model, "closed", False) is True:
        raise ZoodipError(CLOSED)
    missing = [name for name in MODEL_INTERFACE if not hasattr(model, name)]
    if missing:
        lacks = f", which has no {', '.join(missing)}" if len(missing) < len(MODEL_INTERFACE) else ""  # (None: none)
        raise ZoodipError(f"model must be an ExportedModel (ExportedModel.load(path)), got {type(model).__name__}{lacks}")


def clip_skip_problem(clip_skip: object, layers: int) -> str:
    """The one-line refusal of a ``clip_skip`` that a text encoder with ``layers`` skippable layers cannot honour."""
    if layers == 0:
        return ("this export's text encoder gives its last layer only (it was made before clip skip): re-export the "
                "model with this version of 'zoodip export' to use clip_skip")
    return (f"clip_skip must be an integer from 0 to {layers} (layers skipped from the end of this {layers + 1}-layer "
            f"text encoder, as diffusers counts; A1111's 'Clip skip' N is N - 1 here), got {clip_skip!r}")


# (graph, input) -> {axis: the manifest's model field that gives its size}, where the graph fixes it.
_INPUT_SIZES = {("unet", "sample"): {1: "latent_channels"}, ("vae_decoder", "latent_sample"): {1: "latent_channels"},
                ("unet", "encoder_hidden_states"): {2: "cross_attention_dim"},
                ("text_encoder", "inputs_embeds"): {1: "max_length", 2: "hidden_size"}}


class ExportedModel:
    """The four graphs of an export folder, its tokenizer, embedding table and noise schedule."""

    def __init__(self, folder: Path, manifest: dict[str, Any], options: RuntimeOptions) -> None:
        self.folder, self.manifest, self.options = Path(folder).absolute(), manifest, options  # (absolute: a copy
        self._identity = hashlib.sha256((self.folder / MANIFEST).read_bytes()).hexdigest()[:16]  # reopens it anywhere)
        info = manifest["model"]
        self.hidden_size: int = int(info["hidden_size"])
        self.cross_attention_dim: int = int(info.get("cross_attention_dim", self.hidden_size))
        self.max_length: int = int(info.get("max_length", 77))
        self.latent_channels: int = int(info["latent_channels"])
        self.vae_scale_factor: int = int(info["vae_scale_factor"])
        self.scaling_factor: float = float(info["scaling_factor"])
        self.sample_size: int = int(info["sample_size"])
        self.unet_halvings: int | None = info.get("unet_halvings")  # None: not recorded (see side_multiple)
        self.unet_follows_skips: bool = bool(info.get("unet_upsampling_follows_skips"))  # any latent side runs
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._max_token_norm: float | None = None
        self._sessions_lock = threading.Lock()  # two threads' generate(): one's release() between the other's steps
        self._closed = False  # close(): its sessions released, none opened again
        # Each file as opened: a session made later (first use, or after release) from a replaced file would mix two
        # exports' graphs with this one's tokenizer and schedule.
        # Keyed by each path as the manifest writes it, a graph's too ("./unet.onnx" for the files entry "unet.onnx"),
        # matched now as the files they open: resolved later, a repointed folder link would match none.
        self._opened = {name: _file_state(self.folder / name) for name in manifest["files"]}
        by_file = {manifest_file(self.folder, name): state for name, state in self._opened.items()}
        # (the graphs the SDK opens, which the manifest check saw are objects: a hand-added "note" may be any value)
        graphs = [manifest["graphs"][name] for name in GRAPHS]
        self._opened.update({file: by_file.get(manifest_file(self.folder, file)) for graph in graphs
                             for file in filter(None, (graph.get("file"), graph.get("external_data")))})

        scheduler_path = self.folder / manifest["scheduler"]
        try:
            scheduler_config = parse_json(scheduler_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ZoodipError(f"cannot read {scheduler_path} ({exc}): re-run 'zoodip export'") from None
        if not isinstance(scheduler_config, dict):
            raise ZoodipError(f"{scheduler_path} is not a JSON object (a scheduler config): re-run 'zoodip export'")
        if "prediction_type" in info:
            scheduler_config.setdefault("prediction_type", info["prediction_type"])
        self.scheduler_config: dict[str, Any] = scheduler_config  # samplers read the inference settings
        self.schedule = NoiseSchedule.from_config(scheduler_config)
        self.tokenizer = CLIPTokenizer.from_folder(self.folder / manifest["tokenizer"])
        if self.tokenizer.max_length != self.max_length:  # its ids would not fit the text encoder's positions
            raise ZoodipError(f"the tokenizer's model_max_length is {self.tokenizer.max_length}, the text encoder's "
                              f"{self.max_length} (the manifest's model.max_length): copy the model's own tokenizer "
                              "folder again, or re-run 'zoodip export'")

        table_info = manifest["token_embeddings"]
        table_path = self.folder / table_info["file"]
        try:
            # Memory-mapped fp16: the 49408-row table costs no resident memory until rows are read.
            self.token_embeddings: np.ndarray = np.load(table_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ZoodipError(f"cannot read {table_path} ({exc}): re-run 'zoodip export'") from None
        if self.token_embeddings.ndim != 2 or self.token_embeddings.shape[1] != self.hidden_size:
            raise ZoodipError(f"{table_path} has shape {self.token_embeddings.shape}, expected [vocab, "
                              f"{self.hidden_size}]: the manifest and files disagree, re-run 'zoodip export'")
        if self.token_embeddings.shape[0] != self.tokenizer.base_vocab_size:
            raise ZoodipError(f"{table_path} has {self.token_embeddings.shape[0]} rows but the tokenizer has "
                              f"{self.tokenizer.base_vocab_size} tokens: re-run 'zoodip export'")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (multiprocessing) or deep-copied: opened again from its folder,
        return reopen_export, (self.folder, self.options, self.identity)  # sessions of its own (they cannot be copied)

    def close(self) -> None:
        """Release every onnxruntime session now (an app's deterministic free; a second close does nothing). The
        model is not used again: a later call is one ZoodipError line (``ExportedModel.load`` opens it anew). A
        session another thread is running finishes that run."""
        with self._sessions_lock:
            self._closed = True
            released, self._sessions = bool(self._sessions), {}
        if released:
            trim_heap()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ExportedModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, options: RuntimeOptions | None = None,
             verify_hashes: bool | None = None) -> ExportedModel:
        """Open an export folder after checking its manifest and files.

        ``verify_hashes``: None (default) checks each file's sha256 once per file identity (see
        ``zoodip.integrity``); True re-hashes every file now; False skips the hashes (sizes only).
        """
        if not isinstance(folder, (str, os.PathLike)) or not str(folder).strip():
            raise ZoodipError(f"the export folder must be a path, got {folder!r}")
        check_runtime_options(options)
        if verify_hashes is not None and not isinstance(verify_hashes, bool):
            raise ZoodipError(f"verify_hashes must be None, True or False, got {verify_hashes!r}")
        folder = Path(folder)
        manifest = read_manifest(folder)
        check_utf8_path(folder, "the export folder", "onnxruntime")
        if verify_hashes is not False:
            verify_files(folder, manifest["files"], force=bool(verify_hashes))
        # A copy: the model sets its own (low_memory under a budget), and a caller's later change is not checked.
        # NumPy counts as the plain ints they equal: what reads model.options (or dumps it as JSON) sees Python ints.
        options = RuntimeOptions() if options is None else replace(
            options, extra_config=dict(options.extra_config), session_attributes=dict(options.session_attributes),
            threads=int(options.threads),
            memory_budget_mb=None if options.memory_budget_mb is None else int(options.memory_budget_mb))
        model = cls(folder, manifest, options)
        model.check_memory_budget()
        model.session_options()  # (a session attribute onnxruntime refuses: said now, not at the first graph)
        return model

    def weights_bytes(self, names: tuple[str, ...] = ("text_encoder", "unet")) -> int:
        """Bytes of the graph files (graph + external data) of ``names``, from the manifest."""
        total = 0
        for name in names:
            graph = self.manifest["graphs"][name]
            for file in (graph.get("file"), graph.get("external_data")):
                if file:
                    info = self.manifest["files"].get(file, {})
                    total += int(info["bytes"]) if "bytes" in info else (self.folder / file).stat().st_size
        return total

    def check_memory_budget(self) -> None:
        """With a memory budget: low-memory sessions, and a clear error if the weights alone exceed it."""
        check_runtime_options(self.options)  # the budget's own rule among the others (load checks them first)
        budget = self.options.memory_budget_mb
        if budget is None:
            return
        self.options.low_memory = True
        limit_heap_arenas()
        return_large_blocks()
        need = -(-self.weights_bytes() // (1 << 20))
        if budget < need:
            raise ZoodipError(
                f"memory_budget_mb {budget} is below the {need} MB that the text encoder and UNet weights of "
                f"{self.folder} alone take: raise the budget, or use a smaller export ('zoodip export' with its default "
                f"recipe, w4a32: 4-bit weights)"
            )

    @property
    def identity(self) -> str:
        """A short hash of the manifest, which lists every file's sha256 (as opened): another export, another identity."""
        return self._identity

    def curvature(self) -> CurvatureSubspace | None:
        """The export's curvature subspace (``zoodip.curvature``), or None where it has none."""
        entry = self.manifest.get("curvature")
        if entry is None:
            return None
        subspace = CurvatureSubspace.load(self.folder / entry["file"])
        if subspace.dim != self.hidden_size:
            raise ZoodipError(f"{self.folder / entry['file']}: curvature of width {subspace.dim}, the model's is "
                              f"{self.hidden_size}; re-export the model")
        return subspace

    def max_token_norm(self, rows: int = 4096) -> float:
        """The largest L2 norm of a row of the token-embedding table.

        Read from the file in chunks with plain reads, not through the memory map: touching every
        page of the map would add the whole table to the resident set of a memory-budgeted run.
        """
        if self._max_token_norm is not None:  # the table never changes: read once (generate asks every call)
            return self._max_token_norm
        table = self.token_embeddings
        path = self.folder / self.manifest["token_embeddings"]["file"]
        offset = getattr(table, "offset", None)
        if offset is None or not table.flags.c_contiguous:  # not a plain memory map: read it as it is
            best = float(np.max(np.sum(np.square(np.asarray(table, np.float32)), axis=1)))
        else:
            width, dtype, best = table.shape[1], table.dtype, 0.0
            with open(path, "rb") as handle:
                handle.seek(offset)
                for start in range(0, table.shape[0], rows):
                    count = min(rows, table.shape[0] - start)
                    chunk = np.frombuffer(handle.read(count * width * dtype.itemsize), dtype=dtype).reshape(count, width)
                    best = max(best, float(np.max(np.sum(np.square(chunk, dtype=np.float32), axis=1))))
        self._max_token_norm = float(np.sqrt(best))
        return self._max_token_norm

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    def session_options(self, graph: str | None = None) -> tuple[ort.SessionOptions, list[str]]:
        """Session options and disabled optimizers for this export's recipe (and for ``graph``, if named)."""
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # its own error lines: a failure is one ZoodipError line (the contract), not two
        if self.options.threads:
            opts.intra_op_num_threads = int(self.options.threads)
            opts.inter_op_num_threads = 1
        # The default is onnxruntime's own (spinning on); it is set either way, so the choice is explicit.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spin_wait else "0")
        if self.options.low_memory:
            opts.enable_mem_reuse = False
            opts.enable_mem_pattern = False
        if graph in RUN_ONCE_PER_IMAGE:
            # The arena keeps its high-water mark, and within one whole decode its freed buffers cannot serve
            # the larger ones that follow: the peak outgrows memory_plan.decode_bytes, which the size checks
            # count. Without it each buffer is the system's, which makes the decode slower (once per image;
            # both measured in benchmarks/README.md, "The decode estimate without a budget").
            opts.enable_cpu_mem_arena = False
        check_recipe_kept(self.options.extra_config, self.manifest)
        disabled = apply_export_session(opts, self.manifest.get("session"))
        for key, value in self.options.extra_config.items():
            opts.add_session_config_entry(key, value)
        for key, value in self.options.session_attributes.items():
            if key.startswith("_") or not hasattr(opts, key):
                raise ZoodipError(f"'{key}' is not an onnxruntime SessionOptions attribute: check RuntimeOptions.session_attributes")
            try:
                setattr(opts, key, value)
            except (TypeError, ValueError) as exc:  # pybind's own words run to several lines
                raise ZoodipError(f"RuntimeOptions.session_attributes['{key}'] = {value!r:.40} is not a value onnxruntime "
                                  f"takes ({type(getattr(opts, key)).__name__} expected)") from None
        return opts, disabled

    def session(self, name: str) -> ort.InferenceSession:
        """The onnxruntime session of one graph, created on first use (and returned even if another thread
        releases it at once: its caller holds it)."""
        with self._sessions_lock:
            if self._closed:
                raise ZoodipError(CLOSED)
            session = self._sessions.get(name)
            if session is None:
                graph = self.manifest["graphs"][name]
                path = self.folder / graph["file"]
                for file in filter(None, (graph.get("file"), graph.get("external_data"))):
                    if file in self._opened and _file_state(self.folder / file) != self._opened[file]:
                        raise ZoodipError(f"the export at {self.folder} changed since the model was opened ({file}): "
                                          "open it again")
                opts, disabled = self.session_options(name)
                if name in RUN_ONCE_PER_IMAGE:
                    # Its buffers are malloc's (no arena). Left to glibc's rising threshold (no budget fixed it), its
                    # 1-32 MiB maps stayed in a fragmenting heap, well above memory_plan.decode_bytes at small sizes
                    # (benchmarks/README.md, "The decoder fixes the C heap's threshold").
                    return_large_blocks()
                try:
                    session = ort.InferenceSession(
                        str(path), sess_options=opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
                    )
                except Exception as exc:  # onnxruntime raises several unrelated types
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ZoodipError(f"onnxruntime cannot load {path}: {first}: re-run 'zoodip export'") from None
                self._check_io(name, session)
                self._sessions[name] = session
            return session

    def _check_io(self, name: str, session: ort.InferenceSession) -> None:
        expected = self.manifest["graphs"][name]
        have = {i.name for i in session.get_inputs()}
        want = set(expected.get("inputs", {}))
        if want and have != want:
            raise ZoodipError(
                f"{expected['file']} has inputs {sorted(have)}, the manifest says {sorted(want)}: re-run 'zoodip export'"
            )
        for graph_input in session.get_inputs():  # the sizes the SDK lays its arrays out by, against the graph's own
            for axis, key in _INPUT_SIZES.get((name, graph_input.name), {}).items():
                size = graph_input.shape[axis] if len(graph_input.shape) > axis else None
                if isinstance(size, int) and size != self.manifest["model"].get(key):
                    raise ZoodipError(f"{expected['file']}'s input {graph_input.name} has {size} on axis {axis}, the "
                                      f"manifest's model.{key} says {self.manifest['model'].get(key)!r}: re-run "
                                      "'zoodip export'")

    def release(self, name: str) -> None:
        """Drop a graph's session (e.g. the VAE encoder once the photos are cached) and trim the heap."""
        with self._sessions_lock:
            released = self._sessions.pop(name, None) is not None
        if released:
            trim_heap()

    # -- the four graphs -----------------------------------------------------------------------
    def embed_tokens(self, ids: np.ndarray, extra_rows: np.ndarray | None = None) -> np.ndarray:
        """Token embeddings [B, L, H] float32; ids >= base vocab index ``extra_rows`` (added tokens)."""
        ids = np.asarray(ids, dtype=np.int64)
        base = self.token_embeddings.shape[0]
        out = np.empty(ids.shape + (self.hidden_size,), dtype=np.float32)
        is_added = ids >= base
        out[~is_added] = self.token_embeddings[ids[~is_added]]
        if is_added.any():
            if extra_rows is None or int(ids[is_added].max()) - base >= len(extra_rows):
                raise ZoodipError("a prompt uses an added token whose embedding was not given: load its embedding first")
            out[is_added] = np.asarray(extra_rows, dtype=np.float32)[ids[is_added] - base]
        return out

    @property
    def clip_skip_layers(self) -> int:
        """The most layers ``clip_skip`` can skip: the text encoder's layers less one, or 0 for an export made
        before the text encoder gave its inner layers' states."""
        shape = self._io_shape("text_encoder", "outputs", "clip_skip_states")
        return shape[1] if len(shape) == 4 and type(shape[1]) is int and shape[1] > 0 else 0

    @property
    def text_length_free(self) -> bool:
        """Whether the UNet takes text states of any length (A1111's long prompts, several 77-token encodings end
        to end); an export made before it did reads 77 states only."""
        shape = self._io_shape("unet", "inputs", "encoder_hidden_states")
        return len(shape) == 3 and isinstance(shape[1], str)

    def _io_shape(self, graph: str, side: str, name: str) -> list:
        """The manifest's shape of a graph's input or output (``side``), or [] where it does not say."""
        entries = self.manifest["graphs"][graph].get(side)
        entry = entries.get(name) if isinstance(entries, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        return shape if isinstance(shape, list) else []

    def text_encoder(self, inputs_embeds: np.ndarray, clip_skip: int = 0) -> np.ndarray:
        """CLIP text encoder on token embeddings [B, 77, H] -> its last layer's states [B, 77, Hc], or with
        ``clip_skip`` k those of the k-th layer from the end (diffusers' ``clip_skip``), through the final norm."""
        feeds = {"inputs_embeds": np.ascontiguousarray(inputs_embeds, np.float32)}
        if not clip_skip:
            return self.session("text_encoder").run(["last_hidden_state"], feeds)[0]
        if not 0 < clip_skip <= self.clip_skip_layers:
            raise ZoodipError(clip_skip_problem(clip_skip, self.clip_skip_layers))
        return self.session("text_encoder").run(["clip_skip_states"], feeds)[0][:, clip_skip - 1]

    def encode_text(self, ids: np.ndarray, extra_rows: np.ndarray | None = None, clip_skip: int = 0) -> np.ndarray:
        return self.text_encoder(self.embed_tokens(ids, extra_rows), clip_skip)

    def unet(self, sample: np.ndarray, timestep: np.ndarray, encoder_hidden_states: np.ndarray, *,
             release_arena: bool = False) -> np.ndarray:
        """The UNet's prediction. ``release_arena``: after this run onnxruntime returns its arena's free memory to the
        system, where it would keep its peak for the next run; a caller passes it on its last run before other work
        (``generate``: the decode), and the next run allocates again."""
        feeds = {
            "sample": np.ascontiguousarray(sample, np.float32),
            "timestep": np.ascontiguousarray(np.broadcast_to(np.asarray(timestep, np.float32), (len(sample),))),
            "encoder_hidden_states": np.ascontiguousarray(encoder_hidden_states, np.float32),
        }
        try:
            return self.session("unet").run(None, feeds, _RELEASE_ARENA if release_arena else None)[0]
        except Exception as exc:  # onnxruntime's Fail: a size whose halvings do not meet its skip connections again
            if "mismatched dimensions" not in str(exc):
                raise
            h, w = (side * self.vae_scale_factor for side in sample.shape[2:])
            raise ZoodipError(f"the UNet cannot run at {w}x{h} px (this export's skip connections meet again only at multiples"
                              f" of {sd_unet_side_multiple(self.vae_scale_factor)} px on SD1.x/2.x): use such sides, or export the model again") from None

    def _vae_moments(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The VAE posterior's mean and std for images [B,3,H,W] in [-1,1], unscaled."""
        params = self.session("vae_encoder").run(None, {"sample": np.ascontiguousarray(images, np.float32)})[0]
        mean, logvar = np.split(params, 2, axis=1)
        return mean, np.exp(0.5 * np.clip(logvar, -30.0, 20.0))

    def vae_posterior(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images [B,3,H,W] in [-1,1] -> the VAE posterior's mean and std, both scaled as latents (float32)."""
        mean, std = self._vae_moments(images)
        return (mean * self.scaling_factor).astype(np.float32), (std * self.scaling_factor).astype(np.float32)

    def vae_encode(self, images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Images [B,3,H,W] in [-1,1] -> scaled latents. With ``rng``: a sample of the posterior, else its mean."""
        latents, std = self._vae_moments(images)
        if rng is not None:
            latents = latents + std * rng.standard_normal(latents.shape).astype(np.float32)
        return (latents * self.scaling_factor).astype(np.float32)

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents -> images [B,3,H,W] in about [-1, 1]."""
        unscaled = np.ascontiguousarray(np.asarray(latents, np.float32) / self.scaling_factor)
        return self.session("vae_decoder").run(None, {"latent_sample": unscaled})[0]

    @property
    def side_multiple(self) -> int:
        """The step of image sides this model runs at (:func:`zoodip.image_side.unet_side_multiple`)."""
        return unet_side_multiple(self.vae_scale_factor, self.unet_halvings, self.unet_follows_skips)

    def check_resolution(self, resolution: int) -> int:
        """The latent size for an image resolution, or a clear error."""
        return check_model_side(self, "resolution", resolution, self.default_resolution) // self.vae_scale_factor

    @property
    def default_resolution(self) -> int:
        return self.sample_size * self.vae_scale_factor


def _file_state(path: Path) -> tuple[int, ...] | None:
    """What tells a file from its replacement without reading it (``integrity.file_identity``), or None if it is gone."""
    try:
        return tuple(file_identity(path))
    except OSError:
        return None


def reopen_export(folder: Path, options: RuntimeOptions, identity: str) -> ExportedModel:
    """A pickled or copied ``ExportedModel`` opened again: the same export, or one line saying it changed."""
    model = ExportedModel.load(folder, options)
    if model.identity != identity:
        raise ZoodipError(f"the export at {folder} changed since the model was opened: open it again")
    return model
