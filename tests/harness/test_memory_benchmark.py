"""benchmarks/memory.py on the tiny model (seconds), and the SDK's memory-budget mode."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zoodip.errors import ZoodipError
from zoodip.model import ExportedModel, RuntimeOptions

REPO = Path(__file__).resolve().parents[2]
MEMORY_PY = REPO / "benchmarks" / "memory.py"


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory, tiny_sd_folder, tiny_export, tiny_w4_export) -> Path:
    """A benchmark cache pre-filled with the session's tiny folder and exports (no second export)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _models import export_name
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from zoodip_export.onnx_export import ATTENTION_QUERY_CHUNKS

    cache = tmp_path_factory.mktemp("bench-cache")
    shutil.copytree(tiny_sd_folder, cache / "tiny-random-s0")
    shutil.copytree(tiny_export, cache / export_name(True, "w8a32", ATTENTION_QUERY_CHUNKS))
    shutil.copytree(tiny_w4_export, cache / export_name(True, "w4a32", ATTENTION_QUERY_CHUNKS))
    return cache


def _memory(*args: str, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MEMORY_PY), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def test_tiny_benchmark_writes_json_table_and_chart(bench_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _memory("--tiny", "--contenders", "ours-int8,L6-ours-vocabulary-subspace,torch-backprop-ti",
                   "--steps", "2", "--directions", "8", "--out", str(out), "--cache", str(bench_cache))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| ours-int8 |" in done.stdout and "torch backprop TI peak / ours peak" in done.stdout
    # ours-int8 runs the default recipe, W4A32: its row is also held to the 4-bit recipe's targets.
    assert "ours-w4a32 peak RSS" in done.stdout and "torch backprop TI peak / ours-w4a32 peak" in done.stdout
    report = json.loads((out / "memory.json").read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["versions"]["onnxruntime"]
    rows = {row["name"]: row for row in report["rows"]}
    for name in ("ours-int8", "L6-ours-vocabulary-subspace", "torch-backprop-ti"):
        row = rows[name]
        assert not row["errors"], row["errors"]
        assert row["peak_rss"]["min"] > 10e6 and row["ru_maxrss"]["max"] >= row["peak_rss"]["max"] * 0.9
        assert row["step_s"]["n"] >= 1 and row["step_s"]["min"] > 0
    ours = rows["ours-int8"]
    assert ours["spec"]["memory_budget_mb"] and ours["runs"][0]["batched"] is False  # the budget's sequential mode
    # The default searches the export's curvature subspace, the option's row the vocabulary's principal
    # subspace: both fewer dimensions than the embedding's 32.
    assert ours["runs"][0]["search_dim"] < 32 and rows["L6-ours-vocabulary-subspace"]["runs"][0]["search_dim"] < 32
    breakdown = ours["breakdown"]
    assert breakdown["weights_file_bytes"] > 0 and breakdown["runtime_overhead_rss"] > 0
    assert -1 <= ours["fidelity"] <= 1
    assert (out / "memory.md").read_text().startswith("Resolution 128 px")
    assert (out / "memory.png").stat().st_size < 200_000


def test_tiny_generation_rows_split_every_peak(bench_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _memory("--tiny", "--contenders", "ours-int8,generation", "--steps", "2", "--no-fidelity",
                   "--out", str(out), "--cache", str(bench_cache))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads((out / "memory.json").read_text())["rows"]}
    assert set(rows) == {"ours-int8", "generate-int8", "generate-int8-budget", "generate-w4a32-budget", "img2img-int8-budget",
                         "inpaint-int8-budget", "inpaint-only-masked-int8-budget", "long-prompt-int8-budget",
                         "composed-prompt-int8-budget"}
    for row in rows.values():
        assert not row["errors"], row["errors"]
        split = row["peak_split"]
        assert split["file"] > 0 and split["anon"] > 0 and split["file"] + split["anon"] <= split["peak"] * 1.05
    for name in ("generate-int8", "generate-int8-budget"):
        run = rows[name]["runs"][0]
        assert set(rows[name]["phases"]) == {"imports", "load", "text", "unet", "decode"}
        assert len(run["step_times"]) == 25 and run["image_size"] == [128, 128, 3] and run["decode_tile"] is None
    assert rows["generate-int8-budget"]["spec"]["memory_budget_mb"] and not rows["generate-int8"]["spec"].get("memory_budget_mb")
    img2img = rows["img2img-int8-budget"]
    assert set(img2img["phases"]) == {"imports", "load", "text", "encode", "unet", "decode"}
    assert len(img2img["runs"][0]["step_times"]) == 20 and img2img["runs"][0]["encode_estimate_bytes"] > 0
    inpaint = rows["inpaint-int8-budget"]["runs"][0]  # strength 1.0: all the steps, with the image's latents encoded
    assert inpaint["mask"] and len(inpaint["step_times"]) == 25 and inpaint["encode_estimate_bytes"] > 0
    only_masked = rows["inpaint-only-masked-int8-budget"]["runs"][0]  # the photo keeps its 6000x4000 size
    assert only_masked["only_masked_padding"] == 32 and only_masked["image_size"] == [4000, 6000, 3]
    assert rows["long-prompt-int8-budget"]["runs"][0]["text_states"] == 4 * 77  # the most chunks read
    composed = rows["composed-prompt-int8-budget"]["runs"][0]  # that AND an edited part: three passes a step
    assert composed["text_states"] == 4 * 77 and composed["forwards_per_step"] == 3 and len(composed["step_times"]) == 25
    assert rows["generate-int8-budget"]["runs"][0]["text_states"] == 77
    text = (out / "memory.md").read_text()
    assert "| generate-int8-budget |" in text and "generation with --memory-budget, peak / ours personalization peak" in text


def test_vae_tiles_script_compares_tiled_with_whole_decoding(tiny_export: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "vae_tiles.py"), "--export", str(tiny_export),
                           "--resolution", "128", "--tiles", "8,12"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 8 (64 px)") or line.startswith("| 12 (96 px)")]
    assert len(rows) == 2 and "| 9 |" in rows[0] and "| 4 |" in rows[1]  # 3x3 and 2x2 tiles over 16 latents
    assert "cores)" in done.stdout.splitlines()[1]  # when and where it ran, below the command


def test_render_rewrites_the_reports_of_a_stored_run(tmp_path: Path) -> None:
    """(--render --out DIR was a TypeError after --out stopped being read as a Path.)"""
    shutil.copy(REPO / "benchmarks" / "results" / "memory" / "memory.json", tmp_path / "memory.json")
    done = _memory("--render", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "memory.md").stat().st_size > 0 and (tmp_path / "memory.png").stat().st_size > 0


@pytest.mark.parametrize("mark", [{"tiny": True}, {"command": "python benchmarks/memory.py --tiny --out x"}])
def test_a_tiny_run_is_not_held_to_the_sd15_targets(mark: dict, tmp_path: Path) -> None:
    """A --tiny run's report printed SD1.5's targets (peak <= 1.3 GB: met, ...) for a model of a few MB."""
    report = json.loads((REPO / "benchmarks" / "results" / "memory" / "memory.json").read_text())
    (tmp_path / "memory.json").write_text(json.dumps({**report, **mark}))
    done = _memory("--render", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "memory.md").read_text()
    assert "ours peak RSS (max over repetitions): " in text and "(target" not in text and "met)" not in text
    assert "SD1.5's targets do not apply" in text
    # The stored SD1.5 run keeps its targets.
    shutil.copy(REPO / "benchmarks" / "results" / "memory" / "memory.json", tmp_path / "memory.json")
    assert _memory("--render", "--out", str(tmp_path), timeout=120).returncode == 0
    assert "(target <= 1.3 GB: " in (tmp_path / "memory.md").read_text()


def test_unknown_contender_is_a_one_line_error(tmp_path: Path) -> None:
    done = _memory("--tiny", "--contenders", "nope", "--out", str(tmp_path), "--cache", str(tmp_path / "c"), timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown contender 'nope'") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,needle", [
    (["--contenders", ","], "names no contender"),
    (["--out", ""], "--out is empty"),
    (["--timeout", "inf"], "--timeout (seconds per contender)"),
    (["--photos", "100000"], "--photos must be at most 100"),
    ([], "--tiny measures the tiny model: give it an --out folder"),
])
def test_flags_that_would_write_elsewhere_or_run_for_ever_are_one_line(flags, needle, tmp_path: Path) -> None:
    """--contenders ',' wrote an empty table over the committed results, --tiny without --out the tiny model's numbers
    over them, --out '' into the current folder; --timeout inf was an OverflowError after the exports, --photos 100000
    a traceback per contender."""
    out = [] if "--out" in flags or not flags else ["--out", str(tmp_path / "out")]
    done = _memory("--tiny", *flags, *out, "--cache", str(tmp_path / "c"), timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and needle in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == []


def test_memory_budget_below_the_weights_is_refused(tiny_export: Path) -> None:
    need_mb = -(-ExportedModel.load(tiny_export).weights_bytes() // (1 << 20))
    assert need_mb >= 2
    with pytest.raises(ZoodipError, match=f"below the {need_mb} MB that the text encoder and UNet weights"):
        ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=need_mb - 1))
    model = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=need_mb + 100, low_memory=False))
    assert model.options.low_memory  # a budget always means low-memory sessions
    with pytest.raises(ZoodipError, match="^memory_budget_mb must be a positive"):  # the API's name (the CLI: its flag)
        ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=0))


def test_session_attributes_reach_every_session_and_unknown_ones_are_refused(tiny_export: Path) -> None:
    # The memory benchmark's lever rows (L4, L5) change one SessionOptions attribute this way.
    model = ExportedModel.load(tiny_export, RuntimeOptions(session_attributes={"enable_mem_reuse": True,
                                                                               "enable_cpu_mem_arena": False}))
    opts, _ = model.session_options()
    assert opts.enable_mem_reuse and not opts.enable_cpu_mem_arena  # set after low_memory's own settings
    assert not model.session("text_encoder").get_session_options().enable_cpu_mem_arena
    plain, _ = ExportedModel.load(tiny_export).session_options()
    assert not plain.enable_mem_reuse and plain.enable_cpu_mem_arena
    with pytest.raises(ZoodipError, match="'enable_turbo' is not an onnxruntime SessionOptions attribute"):
        ExportedModel.load(tiny_export, RuntimeOptions(session_attributes={"enable_turbo": True})).session_options()


def test_memory_budget_flag_means_sequential_evaluations(tiny_export: Path, photos: Path, tmp_path: Path) -> None:
    from zoodip.cli import add_personalize_flags, config_from_args
    from zoodip.trainer import Personalizer

    import argparse

    parser = argparse.ArgumentParser()
    add_personalize_flags(parser)
    args = parser.parse_args(["--model", str(tiny_export), "--train_data_dir", str(photos), "--output_dir",
                              str(tmp_path / "run"), "--memory-budget", "900", "--max_train_steps", "1"])
    config = config_from_args(args)
    assert config.memory_budget_mb == 900 and config.batched is False
    personalizer = Personalizer(config)
    assert personalizer.loss.batched is False and personalizer.model.options.memory_budget_mb == 900


def test_benchmark_exports_with_the_exporters_default_chunking() -> None:
    # memory.py names the exporter's default (it avoids importing torch for it); keep them equal.
    import importlib.util

    from zoodip_export.onnx_export import ATTENTION_QUERY_CHUNKS

    spec = importlib.util.spec_from_file_location("memory_benchmark", MEMORY_PY)
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)  # module level only: main() runs under __main__
    assert memory.DEFAULT_CHUNKS == ATTENTION_QUERY_CHUNKS
    # ours-int8 is the exporter's default recipe's row, whatever its name says (issue 17).
    from zoodip_export.quantize import DEFAULT_RECIPE

    assert memory.CONTENDERS["ours-int8"][1]["export"] == (DEFAULT_RECIPE["int8"], ATTENTION_QUERY_CHUNKS)
    assert memory.CONTENDERS["ours-w8a32"][1]["export"] == ("w8a32", ATTENTION_QUERY_CHUNKS)


def test_contenders_with_one_spec_are_measured_once() -> None:
    # While W4A32 is the default, ours-int8 and ours-w4a32 are the same run: one measurement, two rows.
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_benchmark", MEMORY_PY)
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    calls = []

    def measure(name: str, resolution: int) -> dict:
        calls.append(name)
        return {"name": name, "description": "", "peak_rss": {"min": 1.0, "max": 1.0}}

    names = ["ours-int8", "ours-w4a32", "ours-w8a32"]
    rows = memory.measure_each_spec_once(names, 128, measure)
    same = memory.CONTENDERS["ours-int8"][1] == memory.CONTENDERS["ours-w4a32"][1]
    assert calls == (["ours-int8", "ours-w8a32"] if same else names)
    assert [row["name"] for row in rows] == names
    if same:
        assert rows[1]["same_as"] == "ours-int8" and rows[1]["description"] == memory.CONTENDERS["ours-w4a32"][0]
        assert "same_as" not in rows[0] and "same_as" not in rows[2]


def test_a_run_that_fails_before_measuring_leaves_no_out_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """An export that failed (or a Ctrl-C while exporting) left the --out folder behind, created empty at the start."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import memory
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def failed(*args, **kwargs):
        raise ZoodipError("exporting tiny-s0-w8a32-q32 failed: (no output)")

    monkeypatch.setattr(memory, "prepare_export", failed)
    out = tmp_path / "out"
    assert memory.main(["--tiny", "--no-fidelity", "--contenders", "ours-int8", "--out", str(out),
                        "--cache", str(tmp_path / "cache")]) == 2
    assert "exporting tiny-s0-w8a32-q32 failed" in capsys.readouterr().err and not out.exists()
