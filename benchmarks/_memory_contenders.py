"""The contenders of benchmarks/memory.py: each a name, a description and the spec its process runs.

A spec's "kind" picks the runner in benchmarks/_contenders.py; "export" is (recipe, attention query
chunks) of the export it runs on. Lever rows each study one knob against ours.
"""
from __future__ import annotations

from zoodip_export.quantize import DEFAULT_RECIPE

DEFAULT_CHUNKS = 32  # the exporter's default query chunks (export/onnx_export.py ATTENTION_QUERY_CHUNKS)

# name -> (description, spec). "export": (recipe, attention query chunks). Lever rows study one knob each.
CONTENDERS: dict[str, tuple[str, dict]] = {
    # The export's default recipe (the name predates the 4-bit default). Where it is also another row's
    # recipe (ours-w4a32), memory.py measures the two once.
    "ours-int8": (f"zoodip SDK, the exporter's default recipe ({DEFAULT_RECIPE['int8'].upper()}), "
                  "--memory-budget (sequential, low-memory sessions), chunked attention",
                  {"kind": "zoodip", "export": (DEFAULT_RECIPE["int8"], DEFAULT_CHUNKS), "memory_budget_mb": 1300}),
    "ours-w8a32": ("zoodip SDK, INT8 W8A32 (int8 weights everywhere), --memory-budget, chunked attention",
                   {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300}),
    "ours-w4a32": ("zoodip SDK, W4A32 (4-bit MatMulNBits where measured to hold, int8 elsewhere), --memory-budget, "
                   "chunked attention",
                   {"kind": "zoodip", "export": ("w4a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300}),
    "onnx-fp32": ("zoodip SDK, fp32 ONNX, sequential, low-memory sessions, chunked attention",
                  {"kind": "zoodip", "export": ("fp32", DEFAULT_CHUNKS), "batched": False}),
    "onnx-fp32-ortdefaults": ("zoodip SDK, fp32 ONNX, sequential, onnxruntime's default session settings (its fastest)",
                              {"kind": "zoodip", "export": ("fp32", DEFAULT_CHUNKS), "batched": False,
                               "low_memory": False}),
    "torch-backprop-ti": ("torch fp32 backprop textual inversion (diffusers script), batch 1",
                          {"kind": "torch_ti"}),
    "torch-zo-fp32": ("torch fp32 forward-only ZO step (same loss, n=2), sequential, latents cached",
                      {"kind": "torch_zo", "batched": False, "once": True}),
    # generation: one image at the run's resolution, 25 DPM-Solver++ steps, guidance 7.5
    "generate-int8": ("zoodip generate, INT8 W8A32, one image, 25 steps, no budget (the CLI's defaults: guidance "
                      "branches batched, every graph kept open)",
                      {"kind": "zoodip_generate", "export": ("w8a32", DEFAULT_CHUNKS), "sampling_steps": 25,
                       "once": True}),
    "generate-int8-budget": ("zoodip generate --memory-budget 1300, INT8 W8A32, one image, 25 steps: one UNet pass "
                             "and one graph at a time, VAE tiles where the image would not fit",
                             {"kind": "zoodip_generate", "export": ("w8a32", DEFAULT_CHUNKS), "sampling_steps": 25,
                              "memory_budget_mb": 1300, "once": True}),
    "generate-w4a32-budget": ("zoodip generate --memory-budget 1300, W4A32, one image, 25 steps: as "
                              "generate-int8-budget on the 4-bit export",
                              {"kind": "zoodip_generate", "export": ("w4a32", DEFAULT_CHUNKS), "sampling_steps": 25,
                               "memory_budget_mb": 1300, "once": True}),
    "img2img-int8-budget": ("zoodip generate --image PHOTO --strength 0.8 --memory-budget 1300, INT8 W8A32, one image: "
                            "the photo through the VAE encoder (whole), then the last 20 of 25 steps, as "
                            "generate-int8-budget otherwise",
                            {"kind": "zoodip_generate", "export": ("w8a32", DEFAULT_CHUNKS), "sampling_steps": 25,
                             "memory_budget_mb": 1300, "strength": 0.8, "once": True}),
    "inpaint-int8-budget": ("zoodip generate --image PHOTO --mask MASK --memory-budget 1300, INT8 W8A32, one image: "
                            "img2img-int8-budget with a mask (its left half redrawn) at inpainting's default strength "
                            "1.0, all 25 steps, the kept half put back after each",
                            {"kind": "zoodip_generate", "export": ("w8a32", DEFAULT_CHUNKS), "sampling_steps": 25,
                             "memory_budget_mb": 1300, "strength": 1.0, "mask": True, "once": True}),
    "inpaint-only-masked-int8-budget": ("zoodip generate --image PHOTO --mask MASK --padding-mask-crop 32 "
                                        "--memory-budget 1300, INT8 W8A32, one image: a 6000x4000 photo whose "
                                        "800x800 box is redrawn at the resolution and pasted back (the photo keeps "
                                        "its size), as inpaint-int8-budget otherwise",
                                        {"kind": "zoodip_generate", "export": ("w8a32", DEFAULT_CHUNKS),
                                         "sampling_steps": 25, "memory_budget_mb": 1300, "strength": 1.0,
                                         "only_masked": 32, "once": True}),
    "long-prompt-int8-budget": ("zoodip generate --prompt-weighting a1111 --memory-budget 1300, INT8 W8A32, one image: "
                                "a prompt of the most chunks read (4, 300 tokens) and a 1-chunk negative prompt, "
                                "as generate-int8-budget otherwise",
                                {"kind": "zoodip_generate", "export": ("w8a32", DEFAULT_CHUNKS), "sampling_steps": 25,
                                 "memory_budget_mb": 1300, "long_prompt": True, "once": True}),
    "composed-prompt-int8-budget": ("zoodip generate --prompt-weighting a1111 --memory-budget 1300, INT8 W8A32, one "
                                    "image: long-prompt-int8-budget's prompt AND a part edited halfway "
                                    "('[a photo of a dog:a photo of a cat:0.5] :0.8'), three UNet passes a step, "
                                    "as generate-int8-budget otherwise",
                                    {"kind": "zoodip_generate", "export": ("w8a32", DEFAULT_CHUNKS),
                                     "sampling_steps": 25, "memory_budget_mb": 1300, "composed": True, "once": True}),
    # levers
    "L0-int8-batched-fullattn": ("before: SDK default (n+1 batched), full attention scores",
                                   {"kind": "zoodip", "export": ("w8a32", 0), "batched": True, "lever": True}),
    "L1-int8-seq-fullattn": ("lever 1: n+1 evaluations one by one",
                                      {"kind": "zoodip", "export": ("w8a32", 0), "batched": False, "lever": True}),
    "L2-int8-seq-fullattn-arena": ("lever 2 contrast: onnxruntime CPU arena and memory patterns on",
                                      {"kind": "zoodip", "export": ("w8a32", 0), "batched": False, "low_memory": False,
                                       "lever": True}),
    "L2-int8-seq-fullattn-arena-devalloc": (
        "lever 2: arena on, session.use_device_allocator_for_initializers=1",
        {"kind": "zoodip", "export": ("w8a32", 0), "batched": False, "low_memory": False, "lever": True,
         "extra_config": {"session.use_device_allocator_for_initializers": "1"}}),
    "L2-ours-1thread": ("lever 2: intra-op threads 1 (instead of all cores)",
                                   {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                                    "threads": 1, "lever": True}),
    "L3-int8-batched-chunked": ("lever 3 alone: query-chunked attention, n+1 batched",
                                      {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "batched": True,
                                       "lever": True}),
    "L4-ours-buffer-reuse-on": ("lever 4 contrast: ours with onnxruntime's buffer reuse on (one fp32 weight copy "
                                "per weight shape stays alive)",
                                {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                                 "lever": True, "session_attributes": {"enable_mem_reuse": True}}),
    "L5-ours-arena-off": ("lever 5 contrast: ours with the CPU arena off (every buffer faulted in afresh)",
                          {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                           "lever": True, "session_attributes": {"enable_cpu_mem_arena": False}}),
    "L6-ours-vocabulary-subspace": ("option: ours with --vocabulary-subspace 0.95 (the token table's PCA fitted at "
                                    "start-up)",
                                    {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                                     "lever": True, "vocabulary_variance": 0.95}),
}
MAIN = ["ours-int8", "onnx-fp32", "onnx-fp32-ortdefaults", "torch-backprop-ti", "torch-zo-fp32"]
GENERATION = ["generate-int8", "generate-int8-budget", "generate-w4a32-budget", "img2img-int8-budget", "inpaint-int8-budget",
              "inpaint-only-masked-int8-budget", "long-prompt-int8-budget", "composed-prompt-int8-budget"]
QUICK_LEVERS = ["L4-ours-buffer-reuse-on", "L5-ours-arena-off"]
