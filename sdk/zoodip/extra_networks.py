"""A1111's extra-network tags, ``<lora:NAME:MULTIPLIER>`` (and ``<lyco:...>``, ``<hypernet:...>``), and the LoRAs an
export holds.

A1111 takes every ``<kind:args>`` tag out of a prompt's text before reading it and applies the network it names.
zoodip fuses LoRAs into the weights once, at export (``zoodip export SRC OUT --lora FILE:SCALE``; the manifest's
``source.loras``), so under A1111's prompt reading it takes the tags out the same way and says, in one line per kind
of problem, where tags ask for what the export does not hold: LoRAs it lacks, one fused at another scale, other
networks; and a tag left unclosed, which A1111 reads as words. Names are compared stripped and composed
(``lora_name``).
"""
from __future__ import annotations

import math
import re
import shlex
import unicodedata
from pathlib import Path
from typing import Any

# A1111's pattern for an extra network's tag: <kind:name[:multiplier[:...]]>.
TAG = re.compile(r"<(\w+):([^>]+)>")
# A tag opened and not closed before the next tag or the text's end (A1111 reads it as words).
_OPEN_TAG = re.compile(r"<(?:lora|lyco|hypernet):[^<>]*(?=<|$)", re.IGNORECASE)
LORA_KINDS = ("lora", "lyco")
LORA_HASH_CHARS = 12  # A1111's "Lora hashes": the first characters of each file's SHA-256


def take_out_tags(prompt: str) -> tuple[str, list[tuple[str, str, tuple[float | None, float | None]]]]:
    """``prompt`` without its tags (as A1111 reads it) and each tag's ``(kind, name, (te, unet))``: A1111's text-encoder
    and UNet multipliers (``<lora:NAME:TE:UNET>`` or ``te=``/``unet=``; the UNet's defaults to the text encoder's,
    which defaults to 1), None for one that is no finite number."""
    calls: list[tuple[str, str, tuple[float | None, float | None]]] = []

    def drop(match: re.Match[str]) -> str:
        name, *args = match.group(2).split(":")
        named = dict(arg.split("=", 1) for arg in args if "=" in arg)
        positional = [arg for arg in args if "=" not in arg]
        te = _number(named.get("te", positional[0] if positional else "1"))
        unet = _number(named.get("unet", positional[1] if len(positional) > 1 else None)) if (
            "unet" in named or len(positional) > 1) else te
        calls.append((match.group(1).lower(), lora_name(name), (te, unet)))
        return ""

    return TAG.sub(drop, prompt), calls


def _number(text: str | None) -> float | None:
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def lora_name(name: str) -> str:
    """A LoRA's name as tags and file names are compared: stripped and in Unicode's composed form (NFC; macOS keeps
    file names decomposed, keyboards type them composed)."""
    return unicodedata.normalize("NFC", name).strip()


def fused_loras(model: Any) -> dict[str, dict[str, Any]]:
    """``{name: its manifest entry}`` of the LoRAs an export holds (name: the file's stem, A1111's name for it)."""
    manifest = getattr(model, "manifest", None) or {}  # its entries' types were checked at load (zoodip.manifest)
    entries = (manifest.get("source") or {}).get("loras") or []
    return {lora_name(Path(entry["file"]).stem): entry for entry in entries}


def lora_hashes(model: Any) -> str:
    """A1111's "Lora hashes" value for an export's LoRAs, ``name: short hash, ...`` ("" without any)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {str(entry.get('sha256', ''))[:LORA_HASH_CHARS]}"
                     for name, entry in fused_loras(model).items())


def tag_problems(prompt: str, model: Any) -> list[str]:
    """What the tags of ``prompt`` ask for that the export does not hold (module doc): one line per kind of problem,
    naming the tags (the first few of many)."""
    held = fused_loras(model)
    lacking: dict[str, str] = {}
    other_scale: dict[str, str] = {}
    other_kind: dict[str, str] = {}
    text, calls = take_out_tags(prompt)
    unclosed = [found.group(0) for found in _OPEN_TAG.finditer(text)]
    for (kind, name, (te, unet)), match in zip(calls, TAG.finditer(prompt)):  # (take_out_tags' matches, in order)
        tag = f"<{kind}:{name}:{_shown(te)}" + ("" if unet == te else f":{_shown(unet)}") + ">"
        if "<" in match.group(2):  # A1111's pattern reads an unclosed tag and the next as one
            unclosed.append(f"<{kind}:{match.group(2).split('<')[0]}")
        elif kind not in LORA_KINDS:
            other_kind[tag] = kind
        elif name not in held:
            lacking[tag] = shlex.quote(f"{name}.safetensors:{_shown(te)}")
        elif te is None or unet is None or not all(
                math.isclose(float(held[name].get("scale", 1.0)), value, abs_tol=1e-6) for value in (te, unet)):
            other_scale[tag] = f"{float(held[name].get('scale', 1.0)):g}"
    problems = []
    if lacking:
        have = ", ".join(f"{other} at {float(entry.get('scale', 1.0)):g}" for other, entry in held.items()) or "none"
        problems.append(f"the prompt's {_listed(lacking)} ask{'s' if len(lacking) == 1 else ''} for LoRAs this export "
                        f"does not hold (it holds {have}): zoodip fuses LoRAs at export, 'zoodip export SRC OUT "
                        f"--lora {next(iter(lacking.values()))}'; the tags are left out of the text")
    if other_scale:
        problems.append(f"the prompt's {_listed(other_scale)} ask{'s' if len(other_scale) == 1 else ''} for another "
                        f"strength than the export's LoRA holds (fused at {', '.join(dict.fromkeys(other_scale.values()))}"
                        "), which its images use: a LoRA's strength is fixed at export, export again ('zoodip export SRC "
                        "OUT --lora FILE:SCALE') for another (a multiplier that is no number counts as another)")
    if unclosed:
        shown = ", ".join(repr(tag.strip()[:40]) for tag in unclosed[:3]) + (
            f" and {len(unclosed) - 3} more" if len(unclosed) > 3 else "")
        problems.append(f"the prompt's {shown} {'has' if len(unclosed) == 1 else 'have'} no closing '>', so A1111 "
                        "reads no tag there but words (or, before another tag, the two as one): close it to name a LoRA")
    if other_kind:
        problems.append(f"the prompt's {_listed(other_kind)} name{'s' if len(other_kind) == 1 else ''} extra networks "
                        f"of a kind zoodip has none of ({', '.join(dict.fromkeys(other_kind.values()))}); left out of "
                        "the text, as A1111 leaves every tag out")
    return problems


def _shown(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _listed(tags: dict[str, str], first: int = 3) -> str:
    names = [tag[:60] for tag in tags]
    return ", ".join(names[:first]) + (f" and {len(names) - first} more" if len(names) > first else "")
