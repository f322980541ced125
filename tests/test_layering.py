"""The sub-packages of ``deepmix`` depend one way.

Order, lowest first (a package may import itself and anything to its left)::

    utils <- data <- layers <- models <- training <- inference <- metrics <- experiments <- cli

``plots`` is a leaf beside the chain: it imports nothing of deepmix but ``utils`` and ``errors``,
and only ``experiments`` and ``cli`` import it. ``metrics`` works on arrays and tensors, not on
models: it too imports only ``utils`` and ``errors`` (callers turn models into arrays with
``inference`` first). Top-level modules are outside the chain:
``errors`` imports nothing of deepmix and everyone may import it; the package ``__init__`` and
``api`` may import anything, and only ``cli`` (and ``__init__``) may import ``api``. Names of the
package itself (``from deepmix import __version__``) only ``cli`` may import: ``__init__``
re-exports models and training, so such an import below ``cli`` would hide a cycle.

Every import counts, module-level or inside a function (a late import hides a cycle, it does not
remove it), relative or absolute.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import deepmix

SRC = Path(deepmix.__file__).resolve().parent

CHAIN = ["utils", "data", "layers", "models", "training", "inference", "metrics", "experiments", "cli"]
RANK = {name: i for i, name in enumerate(CHAIN)}
LEAF = "plots"
LEAF_MAY_IMPORT = {"utils", "errors"}
LEAF_IMPORTERS = {"experiments", "cli"}
#: Packages that may import less than their rank allows: metrics take arrays, not models.
ONLY = {"metrics": {"utils", "errors"}}
#: Who may import the top-level ``api`` module and the package's own names (``__init__``).
API_IMPORTERS = {"cli", "__init__"}
PACKAGE_IMPORTERS = {"cli"}

#: Upward edges tolerated for now, as (file relative to src/deepmix, imported sub-package).
#: Each entry is temporary; remove it together with the import it excuses.
ALLOWED: set[tuple[str, str]] = set()


def _unit(parts: tuple[str, ...]) -> str:
    """Map a dotted module path inside deepmix (without the leading "deepmix") to its unit:
    a sub-package name, a top-level module name, or "__init__" for the package itself."""
    if not parts:
        return "__init__"
    head = parts[0]
    if (SRC / head).is_dir() or (SRC / f"{head}.py").is_file():
        return head
    return "__init__"  # an attribute of the package, e.g. ``from deepmix import __version__``


def _module_parts(path: Path) -> tuple[tuple[str, ...], bool]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts
    if parts[-1] == "__init__":
        return parts[:-1], True
    return parts, False


def _imports(path: Path):
    """Yield (line, imported unit, dotted target) for every deepmix import in one file."""
    mod, is_pkg = _module_parts(path)
    yield from _imports_in(path.read_text(encoding="utf-8"), mod, is_pkg, str(path))


def _imports_in(text: str, mod: tuple[str, ...], is_pkg: bool, filename: str = "<src>"):
    """The imports of one module's source ``text``; ``mod`` is its dotted path inside deepmix."""
    tree = ast.parse(text, filename=filename)
    for node in ast.walk(tree):  # every node: function-level (late) imports count too
        targets: list[tuple[str, ...]] = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                dotted = alias.name.split(".")
                if dotted[0] == "deepmix":
                    targets.append(tuple(dotted[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(mod) if is_pkg else list(mod[:-1])
                up = node.level - 1
                if up > len(base):
                    raise AssertionError(f"{filename}:{node.lineno}: relative import beyond deepmix")
                base = tuple(base[:len(base) - up])
                inner = base + tuple(node.module.split(".")) if node.module else base
            elif node.module and node.module.split(".")[0] == "deepmix":
                inner = tuple(node.module.split(".")[1:])
            else:
                continue
            if node.module and inner:  # ``from .x import y``, ``from deepmix.x import y``
                targets.append(inner)
            else:  # ``from . import data``, ``from deepmix import data``: each name may be a module
                targets.extend(inner + (alias.name,) for alias in node.names)
        for inner in targets:
            yield node.lineno, _unit(inner), ".".join(("deepmix",) + inner)


def _edges():
    """All (source unit, target unit, "file:line", target) between different units."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        mod, is_pkg = _module_parts(path)
        src_unit = mod[0] if mod else "__init__"
        rel = path.relative_to(SRC).as_posix()
        for line, dst_unit, dotted in _imports(path):
            if dst_unit != src_unit:
                edges.append((src_unit, dst_unit, f"{rel}:{line}", dotted))
    return edges


def _allowed(src: str, dst: str) -> bool:
    if dst == "__init__":
        return src in PACKAGE_IMPORTERS
    if src == "errors":
        return False
    if dst == "errors":
        return True
    if src in {"__init__", "api"}:
        return True
    if src == "__main__":      # ``python -m deepmix``: the command line and nothing else
        return dst == "cli"
    if dst == "api":
        return src in API_IMPORTERS
    if src == LEAF:
        return dst in LEAF_MAY_IMPORT
    if src in ONLY:
        return dst in ONLY[src]
    if dst == LEAF:
        return src in LEAF_IMPORTERS
    if src in RANK and dst in RANK:
        return RANK[dst] <= RANK[src]
    return False  # an unknown top-level module: give it a place in this test first


def test_every_sub_package_has_a_place():
    units = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert units <= set(CHAIN) | {LEAF}, f"sub-packages without a rank: {sorted(units - set(CHAIN) - {LEAF})}"
    tops = {p.stem for p in SRC.glob("*.py")}
    assert tops <= {"__init__", "__main__", "errors", "api"}, f"top-level modules without a rule: {sorted(tops)}"


def test_scanner_finds_late_relative_and_absolute_imports():
    text = (
        "import torch\n"
        "from ..errors import SpecError\n"
        "from . import base\n"
        "import deepmix.utils.io\n"
        "def f():\n"
        "    from ..training.annealing import annealing_matrix\n"
        "    from deepmix import data, __version__\n"
        "class C:\n"
        "    def g(self):\n"
        "        import deepmix.metrics.auroc as a\n"
    )
    found = sorted(_imports_in(text, ("layers", "gmm"), False))
    assert found == [
        (2, "errors", "deepmix.errors"),
        (3, "layers", "deepmix.layers.base"),
        (4, "utils", "deepmix.utils.io"),
        (6, "training", "deepmix.training.annealing"),
        (7, "__init__", "deepmix.__version__"),
        (7, "data", "deepmix.data"),
        (10, "metrics", "deepmix.metrics.auroc"),
    ]
    # In a package's __init__, ``from . import x`` is relative to the package itself.
    assert list(_imports_in("from .sampling import f\n", ("inference",), True)) == [
        (1, "inference", "deepmix.inference.sampling")]
    assert not _allowed("layers", "training")
    assert _allowed("training", "layers")
    assert not _allowed("inference", "plots") and _allowed("experiments", "plots")
    assert not _allowed("plots", "data") and _allowed("plots", "utils")
    assert not _allowed("errors", "utils") and _allowed("plots", "errors")
    assert not _allowed("metrics", "models") and not _allowed("metrics", "data")
    assert _allowed("metrics", "utils") and _allowed("experiments", "metrics")
    assert not _allowed("inference", "metrics")
    assert _allowed("cli", "__init__") and not _allowed("models", "__init__")
    assert _allowed("cli", "api") and not _allowed("training", "api") and _allowed("api", "training")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_go_down_the_chain():
    bad = []
    for src, dst, where, dotted in _edges():
        if _allowed(src, dst):
            continue
        file = where.rsplit(":", 1)[0]
        if (file, dst) in ALLOWED:
            continue
        bad.append(f"{where}: {src} -> {dst} (imports {dotted})")
    assert not bad, "upward or forbidden imports:\n" + "\n".join(bad)


def test_allow_list_is_still_needed():
    used = {(where.rsplit(":", 1)[0], dst) for src, dst, where, _ in _edges() if not _allowed(src, dst)}
    stale = ALLOWED - used
    assert not stale, f"ALLOWED entries no longer needed, remove them: {sorted(stale)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def test_no_cycle_between_sub_packages():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for src, dst, loc, dotted in _edges():
        if src == "__init__" or dst in {"__init__", "errors"}:
            continue
        if (loc.rsplit(":", 1)[0], dst) in ALLOWED and not _allowed(src, dst):
            continue  # a known, temporary upward edge (see ALLOWED) would make a cycle
        graph.setdefault(src, set()).add(dst)
        where.setdefault((src, dst), f"{loc} ({dotted})")

    sccs = _cycles(graph)
    lines = []
    for comp in sccs:
        lines.append("cycle among " + ", ".join(comp) + ":")
        lines += [f"  {s} -> {d}: {where[(s, d)]}" for s in comp for d in sorted(graph.get(s, ()))
                  if d in comp]
    assert not sccs, "\n".join(lines)


def test_fresh_import_exposes_sub_packages():
    # The package docstring uses ``deepmix.data.load_images`` after a bare ``import deepmix``.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    code = "import deepmix; deepmix.data.load_images; deepmix.models.DCGMM; deepmix.training.train"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
