"""The architecture from the imports: layers that only point down, no import loop, and an HSTU
trial that loads neither the encoder-decoder nor the semantic-ID stage."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import xla_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
# bottom to top; a package may import those of lower rank only (data and models share one: neither
# imports the other). analysis stands apart: it reads records and imports no other package of the lab.
RANKS = {"config": 0, "data": 1, "models": 1, "semantic_ids": 2, "scaling": 3, "sweeps": 4, "benchmarks": 5}
APART = ("analysis",)
PACKAGES = (*RANKS, *APART)
# inside scaling/: the trial config, the per-trial services, the engine, then the commands and presets
SCALING_RANKS = {"scaling.config": 0, "scaling.services": 1, "scaling.engine": 2}


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imported_names(path: Path, root: Path = REPO_ROOT) -> set[str]:
    """Every module name `path` imports (inside functions too), relative imports resolved, and
    `from P import N` counted as P.N as well (N may be a module)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def import_graph_of(root: Path) -> dict[str, set[str]]:
    """{module: the lab's modules it imports}, over every .py file of the lab's packages under root."""
    files = {module_name(path, root): path for package in PACKAGES for path in (root / package).rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, root):
            parts = name.split(".")
            found = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in files), None)
            if found and found != module:
                targets.add(found)
        graph[module] = targets
    return graph


def is_command(module: str) -> bool:
    """`python -m PACKAGE` entry points: they keep their package's layer, and nothing imports them."""
    return module.endswith(".__main__")


def scaling_rank(module: str) -> int:
    return next((rank for prefix, rank in SCALING_RANKS.items() if module == prefix or module.startswith(prefix + ".")),
                len(SCALING_RANKS))


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        mine = module.split(".")[0]
        for target in targets:
            theirs = target.split(".")[0]
            if is_command(target):
                found.append(f"{module} -> {target} (a command)")
            elif theirs == mine:
                if mine == "scaling" and scaling_rank(target) > scaling_rank(module):
                    found.append(f"{module} -> {target}")
            elif mine in APART or theirs in APART or RANKS[theirs] >= RANKS[mine]:
                found.append(f"{module} -> {target}")
    return sorted(found)


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                loops.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return loops


def test_imports_point_down_without_loops_and_nothing_imports_a_command() -> None:
    graph = import_graph_of(REPO_ROOT)
    assert len(graph) > 100 and graph["scaling.train"]  # the walk found the lab
    assert not upward_imports(graph), "imports that do not point down:\n" + "\n".join(upward_imports(graph))
    assert not import_loops(graph)


def test_the_checks_find_an_upward_import_a_sideways_one_and_a_loop(tmp_path) -> None:
    for module, text in {"data/__init__.py": "", "data/probe.py": "def f():\n    from scaling import train\n"
                         "    from .errors import DataError\n    from models.core import axes\n",
                         "data/errors.py": "from data import probe\n", "data/__main__.py": "import sweeps\n",
                         "models/core/axes.py": "", "scaling/train.py": "", "sweeps/__init__.py": "",
                         "scaling/services/progress.py": "from scaling.engine import meter\n",
                         "scaling/engine/meter.py": "from scaling.services import progress\n"}.items():
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(text)
    graph = import_graph_of(tmp_path)
    assert graph["data.probe"] == {"scaling.train", "data.errors", "models.core.axes"}  # relative, in a function
    assert upward_imports(graph) == ["data.__main__ -> sweeps", "data.probe -> models.core.axes",
                                     "data.probe -> scaling.train", "scaling.services.progress -> scaling.engine.meter"]
    assert import_loops(graph) == [["data.errors", "data.probe"], ["scaling.engine.meter", "scaling.services.progress"]]


@pytest.mark.slow(10)
def test_an_hstu_trial_loads_no_encoder_decoder_and_no_semantic_ids(tmp_path, lab_cache, ml100k) -> None:
    """Nor pandas, once its data is prepared (ml100k: in the cache the trial reads)."""
    script = ("import json, sys\n"
              "from scaling import train\n"
              f"code = train.main(['--preset', 'tiny', '--steps', '2', '--workdir', {str(tmp_path / 'trial')!r}])\n"
              f"print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in {PACKAGES!r}),\n"
              "                  'pandas' in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, XLA_FLAGS=xla_flags(1), SCALING_LAB_CACHE=str(lab_cache)))
    assert done.returncode == 0, done.stderr[-3000:]
    code, modules, pandas = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0 and "models.decoder_only.hstu" in modules and "scaling.train" in modules
    loaded = [m for m in modules if m.startswith(("models.encdec", "semantic_ids", "models.decoder_only.sasrec"))]
    assert not loaded, f"an HSTU trial imported {loaded}"
    assert not pandas, "an HSTU trial imported pandas (the data readers' and the item features' dependency)"
