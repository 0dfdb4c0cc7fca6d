"""Structure of src/trainkit (issue 17), read from the source with ``ast``, nothing imported.

- no import cycles between trainkit modules; imports inside functions count as well (a lazy
  import hides a cycle from the interpreter, not from the design), and so do imports under
  ``if TYPE_CHECKING:``;
- no ``from trainkit.x import _name`` across modules: a helper two modules share is public
  and documented, or lives in the module that owns it;
- no library file over 500 lines.

The Ray trainer's cycle with ``rlhf.trainers.ppo`` and its four private imports were the
last entries; the one RL loop (``rlhf.trainers.rl_loop``) removed them, so nothing is
exempt.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "trainkit"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The longest module prefix of a dotted name (``a.b.func`` -> ``a.b``), if any."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod: str, path: Path, mods: dict[str, Path]):
    """``(target module, imported name or None)`` for every import of a trainkit module in
    ``mod``, at any depth of the file (module level, functions, methods, if-blocks)."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _owner(a.name, mods)
                if target:
                    yield target, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of mod (mod itself for an __init__)
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                target = sub if sub in mods else _owner(base, mods)
                if target:
                    yield target, a.name


def _graph(mods: dict[str, Path]):
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = set()
    for mod, path in mods.items():
        for target, name in _imports(mod, path, mods):
            if target == mod:
                continue
            graph[mod].add(target)
            if name and name.startswith("_") and not name.startswith("__"):
                private.add((mod, target, name))
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _example_loop(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest import loop through the first module of ``comp`` (for the message)."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def _short(mod: str) -> str:
    return mod.removeprefix(PACKAGE + ".")


def _findings() -> tuple[set[str], dict[str, str]]:
    """Every cycle and cross-module private import, one line each, and for each cycle one
    concrete loop."""
    mods = _modules()
    graph, private = _graph(mods)
    found, loops = set(), {}
    for comp in _cycles(graph):
        key = "cycle: " + " <-> ".join(_short(m) for m in comp)
        found.add(key)
        loops[key] = " -> ".join(_short(m) for m in _example_loop(graph, comp))
    for mod, target, name in private:
        found.add(f"private import: {_short(mod)} <- {_short(target)}.{name}")
    return found, loops


def test_graph_reads_the_package():
    mods = _modules()
    graph, _ = _graph(mods)
    assert len(mods) > 50 and "trainkit.kan.model" in mods and "trainkit.llm" in mods
    # module-level, function-level and relative imports are all seen
    assert "trainkit.kan.layer" in graph["trainkit.kan.model"]  # module level
    assert "trainkit.kan.fit" in graph["trainkit.kan.model"]  # inside KAN.fit
    assert "trainkit.llm.lora" in graph["trainkit.llm.models"]  # inside load_model


def test_cycle_finder_and_loop_on_a_toy_graph():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _example_loop(g, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles_or_private_imports():
    found, loops = _findings()
    detail = [f"{x}   (e.g. {loops[x]})" if x in loops else x for x in sorted(found)]
    assert not found, "structure violations (issue 17):\n" + "\n".join(detail)


def test_no_source_file_over_500_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        with path.open(encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long.append(f"{path.relative_to(SRC)}: {n} lines")
    assert not long, f"split these along their seams (at most {MAX_LINES} lines):\n" + "\n".join(
        long
    )
