"""The SDK runs on the oldest Python that pyproject.toml allows (phones and app backends pin old interpreters).

No 3.9 interpreter is at hand here, so the source is read for what a newer Python adds: syntax (parsed with the
floor's grammar), keyword arguments of built-ins and the standard library added later, and type unions spelled
``X | Y`` where they are evaluated (module-level aliases; annotations are postponed in every SDK module).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "sdk" / "zoodip"

# (callable's name, keyword) pairs that a newer Python added: zip's strict and dataclass' kw_only/slots (3.10),
# bisect's key (3.10).
NEWER_KEYWORDS = {("zip", "strict"), ("dataclass", "kw_only"), ("dataclass", "slots"), ("bisect", "key"),
                  ("bisect_left", "key"), ("bisect_right", "key"), ("insort", "key")}
NEWER_NAMES = {"pairwise", "TypeAlias", "ParamSpec", "TypeGuard", "Self", "aiter", "anext", "UTC"}


def python_floor() -> tuple[int, int]:
    spec = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert spec, "pyproject.toml has no requires-python lower bound"
    return int(spec.group(1)), int(spec.group(2))


def _is_type(node: ast.expr) -> bool:
    """Whether ``node`` spells a type (None, a built-in type, a subscripted generic), not a number or a set."""
    return (isinstance(node, ast.Constant) and node.value is None or isinstance(node, ast.Subscript)
            or isinstance(node, ast.Name) and node.id in {"int", "float", "str", "bool", "bytes", "list", "dict", "tuple"})


def newer_python_uses(source: str, floor: tuple[int, int]) -> list[str]:
    """What in ``source`` the Python ``floor`` lacks, by line (empty when nothing)."""
    try:
        tree = ast.parse(source, feature_version=floor)
    except SyntaxError as error:
        return [f"line {error.lineno}: syntax newer than {floor[0]}.{floor[1]}: {error.msg}"]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            found += [f"line {node.lineno}: {called}({keyword.arg}=...)" for keyword in node.keywords
                      if (called, keyword.arg) in NEWER_KEYWORDS]
            # isinstance(x, int | None) evaluates the union wherever it is (a TypeError before 3.10)
            if called in ("isinstance", "issubclass") and len(node.args) == 2 and isinstance(node.args[1], ast.BinOp) \
                    and isinstance(node.args[1].op, ast.BitOr):
                found.append(f"line {node.lineno}: {called}(x, X | Y)")
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if name in NEWER_NAMES:
            found.append(f"line {node.lineno}: {name}")
        if isinstance(node, ast.alias) and node.name in NEWER_NAMES:
            found.append(f"imports {node.name}")
    for statement in tree.body:  # evaluated at import: a type union spelled with | fails before 3.10
        value = statement.value if isinstance(statement, ast.Assign) else None
        if isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr) \
                and any(map(_is_type, (value.left, value.right))):
            found.append(f"line {statement.lineno}: a module-level type union X | Y")
    return found


def test_the_sdk_source_runs_on_the_oldest_python_allowed():
    floor = python_floor()
    offenders = [f"{path.name} {use}" for path in sorted(SDK.rglob("*.py"))
                 for use in newer_python_uses(path.read_text(encoding="utf-8"), floor)]
    assert offenders == []


def test_the_python_floor_scan_sees_what_newer_pythons_add():
    for source in ("zip(a, b, strict=True)", "match x:\n    case 1:\n        pass", "from itertools import pairwise",
                   "@dataclasses.dataclass(slots=True)\nclass A:\n    pass", "Alias = int | None",
                   "def f(x):\n    return isinstance(x, int | None)", "issubclass(t, (str | bytes))"):
        assert newer_python_uses(source, (3, 9)), source
    assert not newer_python_uses("zip(a, b)\nx = a | b\nFLAGS = A | B\nAlias = Union[int, None]\ndef f(x: int | None): pass", (3, 9))
