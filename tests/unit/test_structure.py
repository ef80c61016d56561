"""The repository's structure rules (issue 19), read from the source with ``ast``:

- no module over 500 lines and no function over 60 lines in sdk/, export/ and benchmarks/;
- the SDK imports nothing from reference/, benchmarks/ or the exporter, at module or function level,
  except the one documented entry point of ``zoodip export`` (``zoodip.cli.cmd_export``);
- no module imports a private (``_``-prefixed) name of another module; a package's own private
  modules (benchmarks/_quality_methods.py for benchmarks/quality.py) are its business;
- no import cycles among the SDK's modules, nor among the exporter's;
- the SDK's API imports none of its command line's modules (the CLI says the API's words as its flags: one way).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIZED = ("sdk", "export", "benchmarks")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# (module, function) -> why it must be longer. Empty: every function fits.
LONG_FUNCTIONS: dict[tuple[str, str], str] = {}
# The one way from the SDK into the exporter: `zoodip export` (torch is needed there only).
EXPORT_ENTRY_POINT = ("sdk/zoodip/cli.py", "cmd_export")
# The SDK's command-line modules: the API (every other module) imports none of them.
COMMAND_LINE = ("zoodip.cli", "zoodip.cli_flags", "zoodip.console", "zoodip.entry", "zoodip.foreign_flags",
                "zoodip.__main__")
# Packages by folder: how their modules are named when imported.
PACKAGES = {"sdk/zoodip": "zoodip", "export": "zoodip_export", "benchmarks": "benchmarks", "reference": "reference"}


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def module_name(path: Path) -> str:
    folder = path.parent.relative_to(REPO).as_posix()
    return PACKAGES[folder] + ("" if path.stem == "__init__" else "." + path.stem)


def imports(path: Path) -> list[tuple[str, list[str], str | None]]:
    """(imported module, imported names, enclosing top-level function or None) for every import in ``path``,
    relative imports resolved against its package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).rsplit(".", 1)[0] if path.stem != "__init__" else module_name(path)
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            scope = function
            if function is None and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scope = child.name
            if isinstance(child, ast.Import):
                found.extend((alias.name, [], scope) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                found.append((base, [alias.name for alias in child.names], scope))
            visit(child, scope)

    visit(tree, None)
    return found


@pytest.mark.parametrize("path", python_files(*SIZED), ids=relative)
def test_modules_and_functions_stay_small(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{relative(path)}: split it by concern"
    too_long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
                and (relative(path), node.name) not in LONG_FUNCTIONS]
    assert not too_long, f"{relative(path)}: {', '.join(too_long)} over {MAX_FUNCTION_LINES} lines"


def test_the_sdk_imports_no_repository_tool_and_the_exporter_only_for_zoodip_export():
    outside = ("reference", "benchmarks", "zoodip_export", "torch", "diffusers", "transformers")
    offending = []
    for path in python_files("sdk"):
        for module, _, function in imports(path):
            if module.split(".")[0] in outside and (relative(path), function) != EXPORT_ENTRY_POINT:
                offending.append(f"{relative(path)} ({function or 'module level'}) imports {module}")
    assert not offending


def test_no_module_imports_a_private_name_of_another():
    offending = []
    for path in python_files("sdk", "export", "benchmarks", "reference"):
        own_package = module_name(path).rsplit(".", 1)[0]
        for module, names, _ in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            # `from benchmarks import _quality_methods` inside benchmarks/: the package's own module.
            if private and module != own_package:
                offending.append(f"{relative(path)}: {', '.join(private)} from {module}")
    assert not offending


def test_the_sdks_api_imports_none_of_its_command_lines_modules():
    """cli_flags reads the API's names and messages (prompt_checks.LOAD_ITS_EMBEDDING) to say them as flags; an API
    module importing the command line back would make the two one tangle, and the API's words depend on its flags."""
    offending = [f"{relative(path)} imports {module}" for path in python_files("sdk/zoodip")
                 if module_name(path) not in COMMAND_LINE
                 for module, names, _ in imports(path)
                 if module in COMMAND_LINE or module == "zoodip" and any(f"zoodip.{n}" in COMMAND_LINE for n in names)]
    assert not offending, offending


@pytest.mark.parametrize("folder", ["sdk/zoodip", "export"])
def test_no_import_cycles_within_a_package(folder):
    package = PACKAGES[folder]
    modules = {module_name(path): path for path in python_files(folder) if path.stem != "__init__"}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in imports(path):
            targets = [module] + [f"{module}.{n}" for n in names] if module == package else [module]
            edges[name].update(t for t in targets if t in modules and t != name)

    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [node, target]) if target in trail
                              else f"{node} -> {target}")
            elif target not in state:
                walk(target, trail + [node])
        state[node] = 2

    for node in sorted(modules):
        if node not in state:
            walk(node, [])
    assert not cycles, cycles


def test_the_rules_see_what_they_check():
    # The walkers must find the imports they rule on, or every test above passes vacuously.
    cli = [(m, f) for m, _, f in imports(REPO / EXPORT_ENTRY_POINT[0])]
    assert ("zoodip_export.export_model", "cmd_export") in cli
    assert ("zoodip.errors", None) in cli
    assert any(len(path.read_text().splitlines()) > 300 for path in python_files(*SIZED))


def test_every_module_is_named_in_the_readmes_layout():
    """README's Layout is where a newcomer looks a module up: a dozen SDK and exporter modules had been added without
    it naming them. A ``name*.py`` there stands for its family (quantize*.py)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = text.split("\n## Layout\n", 1)[1].split("\n```\n", 2)[1]
    families = [word[:-4] for word in layout.split() if word.endswith("*.py")]
    modules = [path for folder in ("sdk/zoodip", "export") for path in sorted((REPO / folder).glob("*.py"))]
    modules += [path for path in sorted((REPO / "benchmarks").glob("*.py")) if not path.name.startswith("_")]
    unnamed = [str(path.relative_to(REPO)) for path in modules if path.name != "__init__.py"
               and path.name not in layout and not any(path.name.startswith(f) for f in families)]
    assert not unnamed, f"README.md's Layout does not name {unnamed}"
