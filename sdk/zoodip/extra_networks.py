"""A1111's extra-network tags, ``<lora:NAME:MULTIPLIER>`` (and ``<lyco:...>``, ``<hypernet:...>``), and the LoRAs an
export holds.

A1111 takes every ``<kind:args>`` tag out of a prompt's text before reading it and applies the network it names.
zoodip fuses LoRAs into the weights once, at export (``zoodip export SRC OUT --lora FILE:SCALE``; the manifest's
``source.loras``), so under A1111's prompt reading it takes the tags out the same way and says, in one line each,
where a tag asks for what the export does not hold: a LoRA it lacks, one fused at another scale, a hypernetwork.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

# A1111's pattern for an extra network's tag: <kind:name[:multiplier[:...]]>.
TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
LORA_HASH_CHARS = 12  # A1111's "Lora hashes": the first characters of each file's SHA-256


def take_out_tags(prompt: str) -> tuple[str, list[tuple[str, str, float]]]:
    """``prompt`` without its tags (as A1111 reads it) and each tag's ``(kind, name, multiplier)`` (1 when it
    gives none, or none that reads as a number)."""
    calls: list[tuple[str, str, float]] = []

    def drop(match: re.Match[str]) -> str:
        name, _, rest = match.group(2).partition(":")
        multiplier = rest.partition(":")[0].strip()
        try:
            value = float(multiplier) if multiplier else 1.0
        except ValueError:
            value = 1.0
        calls.append((match.group(1).lower(), name.strip(), value if math.isfinite(value) else 1.0))
        return ""

    return TAG.sub(drop, prompt), calls


def fused_loras(model: Any) -> dict[str, dict[str, Any]]:
    """``{name: its manifest entry}`` of the LoRAs an export holds (name: the file's stem, A1111's name for it)."""
    manifest = getattr(model, "manifest", None)
    source = manifest.get("source") if isinstance(manifest, dict) else None
    entries = source.get("loras") if isinstance(source, dict) else None
    return {Path(str(entry.get("file", ""))).stem: entry for entry in entries if isinstance(entry, dict)
            and isinstance(entry.get("scale", 1.0), (int, float))} if isinstance(entries, list) else {}


def lora_hashes(model: Any) -> str:
    """A1111's "Lora hashes" value for an export's LoRAs, ``name: short hash, ...`` ("" without any)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {str(entry.get('sha256', ''))[:LORA_HASH_CHARS]}"
                     for name, entry in fused_loras(model).items())


def tag_problems(prompt: str, model: Any) -> list[str]:
    """One message per tag of ``prompt`` that asks for what the export does not hold (module doc)."""
    held, problems = fused_loras(model), []
    for kind, name, multiplier in take_out_tags(prompt)[1]:
        tag = f"<{kind}:{name}:{multiplier:g}>"
        if kind not in LORA_KINDS:
            problems.append(f"the prompt's {tag} names an extra network of a kind zoodip has none of ({kind}); the tag "
                            "is left out, as A1111 leaves every tag out of the text it reads")
        elif name not in held:
            have = ", ".join(f"{other} at {entry.get('scale', 1.0):g}" for other, entry in held.items()) or "none"
            problems.append(f"the prompt's {tag} asks for a LoRA this export does not hold (it holds {have}): zoodip "
                            f"fuses LoRAs at export, 'zoodip export SRC OUT --lora {name}.safetensors:{multiplier:g}'; "
                            "the tag is left out")
        elif not math.isclose(float(held[name].get("scale", 1.0)), multiplier, abs_tol=1e-6):
            problems.append(f"the prompt's {tag} asks for {multiplier:g}, but this export holds {name} fused at "
                            f"{float(held[name].get('scale', 1.0)):g}, which its images use: export again with "
                            f"--lora {name}.safetensors:{multiplier:g} for another strength")
    return problems
