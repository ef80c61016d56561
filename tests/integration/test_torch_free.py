"""The SDK must run where torch does not exist (ARM/Android onnxruntime builds)."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk" / "zoodip"

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    HEAVY = {"torch", "diffusers", "transformers", "optimum", "safetensors", "regex", "zoodip_export"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_sdk_imports_and_trains_without_torch(tiny_export, photos, tmp_path):
    proc = run_blocked(
        f"""
        import zoodip, zoodip.cli, zoodip.api, zoodip.trainer, zoodip.generate, zoodip.model
        from zoodip.trainer import PersonalizeConfig, personalize
        config = PersonalizeConfig(export_dir={str(tiny_export)!r}, images={str(photos)!r},
                                   output_dir={str(tmp_path / 'run')!r}, placeholder_token="<t>",
                                   initializer_token="star", max_train_steps=3, eval_every=3, tau=4, threads=1)
        result = personalize(config)
        assert result.embedding_path.is_file()
        assert "torch" not in sys.modules
        print("ok", result.final_eval_loss)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_blocker_really_blocks():
    proc = run_blocked("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr


HEAVY_OR_PICKLING = {"torch", "diffusers", "transformers", "optimum", "pickle", "_pickle", "cPickle", "dill",
                     "joblib", "cloudpickle", "shelve"}


def heavy_or_pickling_uses(source: str) -> list[str]:
    """The imports of HEAVY_OR_PICKLING modules in ``source`` (statements, ``importlib.import_module`` /
    ``__import__`` of a literal name) and its ``allow_pickle=True`` arguments, by line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                names = [str(node.args[0].value)]
            found += [f"line {node.lineno}: allow_pickle=True" for keyword in node.keywords
                      if keyword.arg == "allow_pickle" and not (isinstance(keyword.value, ast.Constant)
                                                                and keyword.value.value is False)]
        found += [f"line {node.lineno}: imports {name}" for name in names if name.split(".")[0] in HEAVY_OR_PICKLING]
    return found


def test_the_sdk_source_imports_nothing_heavy_and_loads_no_pickle():
    offenders = [f"{path.name} {use}" for path in sorted(SDK.rglob("*.py"))
                 for use in heavy_or_pickling_uses(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_source_scan_sees_each_way_in():
    """(The scan it replaced saw only a line starting 'import torch' or holding 'pickle.load'.)"""
    for source in ("import torch.nn", "from pickle import load", "import numpy, dill", "from diffusers.x import y",
                   "importlib.import_module('torch')", "np.load(f, allow_pickle=True)", "np.load(f, allow_pickle=flag)",
                   "def f():\n    import joblib"):
        assert heavy_or_pickling_uses(source), source
    assert not heavy_or_pickling_uses("import numpy as np\nfrom . import torchlike\nnp.load(f, allow_pickle=False)")
