"""The package's layering (docs/architecture.md): imports run `cli -> jobs -> core`, no cycles, no private names.

The import graph is read from the source with `ast` (every `import` / `from ... import`, at module level and
inside functions), so the checks do not depend on what happens to be imported at test time.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vfmtok

PACKAGE_DIR = Path(vfmtok.__file__).parent
CORE_FORBIDDEN = ("vfmtok.cli", "vfmtok.jobs")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, known: set[str]) -> list[tuple[str, str | None, bool]]:
    """(imported module, imported name or None, at module level) for every vfmtok import in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    top_level = {id(node) for node in tree.body}
    typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for sub in ast.walk(stmt)}  # annotations only: never imported at run time
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vfmtok":
                    found.append((alias.name, None, id(node) in top_level))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] != "vfmtok":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # `from vfmtok.data import token_store` imports a module
                    found.append((sub, None, id(node) in top_level))
                else:
                    found.append((base, alias.name, id(node) in top_level))
    return found


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _, top in _imports(path, name, set(mods)):
            if target in mods and target != name and (top or not module_level_only):
                graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_detects_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module-level", "including-deferred"])
def test_no_import_cycle_among_vfmtok_modules(module_level_only):
    cycle = _find_cycle(_graph(module_level_only))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_core_never_imports_jobs_or_cli():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        if name.startswith(CORE_FORBIDDEN) or name in ("vfmtok", "vfmtok.__main__"):
            continue
        for target, _, _ in _imports(path, name, set(mods)):
            if target.startswith(CORE_FORBIDDEN):
                bad.append(f"{name} imports {target}")
    assert not bad, "core modules must not import jobs/cli: " + "; ".join(bad)


def test_jobs_never_import_cli():
    mods = _modules()
    bad = [f"{name} imports {target}" for name, path in mods.items() if name.startswith("vfmtok.jobs")
           for target, _, _ in _imports(path, name, set(mods)) if target.startswith("vfmtok.cli")]
    assert not bad, "; ".join(bad)


def test_no_module_imports_another_modules_private_names():
    mods = _modules()
    bad = [f"{name} imports {target}.{attr}" for name, path in mods.items()
           for target, attr, _ in _imports(path, name, set(mods))
           if attr and attr.startswith("_") and not attr.startswith("__") and target != name]
    bad += [f"{name} imports private module {target}" for name, path in mods.items()
            for target, _, _ in _imports(path, name, set(mods))
            if any(part.startswith("_") and not part.startswith("__") for part in target.split("."))]
    assert not bad, "; ".join(bad)


def test_presets_are_registered_without_importing_a_model_module():
    """The preset registries are plain dicts filled at definition time (importing the config module is enough)."""
    import subprocess
    import sys

    code = ("import sys; from vfmtok.models.gpt_config import GPT_PRESETS; "
            "from vfmtok.models.tokenizer_config import TOKENIZER_PRESETS; "
            "assert 'vfmtok.models.gpt' not in sys.modules and 'vfmtok.models.tokenizer' not in sys.modules; "
            "print(sorted(GPT_PRESETS), sorted(TOKENIZER_PRESETS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'GPT-3B'" in out and "'GPT-tiny'" in out and "'vfmtok-l'" in out and "'tiny'" in out
