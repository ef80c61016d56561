"""The SDK must run where torch does not exist (ARM/Android onnxruntime builds)."""
from __future__ import annotations

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


def test_no_heavy_imports_in_sdk_source():
    pattern = ("import torch", "from torch", "import diffusers", "from diffusers", "import transformers",
               "from transformers", "import optimum", "from optimum", "pickle")
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in SDK.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith(pattern[:-1]) or "pickle.load" in line
    ]
    assert offenders == []
