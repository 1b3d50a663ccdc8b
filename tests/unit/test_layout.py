"""The layout is the architecture: no import cycles, analyses free of the training stack, no
``sys.path`` edits. Read statically from the source (every import, also inside functions)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("whisper_finetuning",)
TRAINING_STACK = {"torch", "torchaudio", "transformers", "speechbrain", "peft"}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources():
    files = [ROOT / "train.py"] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {_module_name(path): path for path in files}


def _imports(path, known, own_name):
    """The project modules and the top-level external packages that ``path`` imports
    (a package importing its own submodules does not import itself)."""
    project, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == own_name:
                continue
            if name in known:
                project.add(name)
            elif name.split(".")[0] not in {p.split(".")[0] for p in known}:
                external.add(name.split(".")[0])
    return project, external


@pytest.fixture(scope="module")
def graph():
    sources = _sources()
    return {name: _imports(path, sources, name) for name, path in sources.items()}


def test_no_import_cycles(graph):
    done, active = set(), []

    def visit(module):
        if module in active:
            cycle = active[active.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        active.append(module)
        for imported in graph[module][0]:
            visit(imported)
        active.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_analyses_never_reach_the_training_stack(graph):
    """The diagnosis and the review run on a laptop without torch: nothing they import, directly
    or through project modules, pulls it in."""

    def reachable(module, seen):
        if module not in seen:
            seen.add(module)
            for imported in graph[module][0]:
                reachable(imported, seen)
        return seen

    for module in [m for m in graph if m.startswith("whisper_finetuning.analysis")]:
        for reached in reachable(module, set()):
            heavy = graph[reached][1] & TRAINING_STACK
            assert not heavy, f"{module} reaches {reached}, which imports {sorted(heavy)}"


def test_no_module_edits_sys_path():
    for path in _sources().values():
        assert "sys.path.insert" not in path.read_text(), path
