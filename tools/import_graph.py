"""korani's import graph, its cycles and its walls — read from the source, nothing imported.

Every `import korani_cli…` / `from korani_cli… import …` (and relative form) in
korani_cli/ is an edge, whether it sits at the top of a module or inside a
function: a lazy import keeps `korani --help` fast, it does not make the
dependency go away.

The walls (STYLE.md: presentation on top, core below, the template at the bottom):
- search ↛ chat, train, rag, turn; rag ↛ chat, train, turn; train ↛ chat, search, turn;
  backends ↛ search, chat, train, turn; turn ↛ train, eval (the answer layer, turn/, sits above rag/ and
  search/, below the front ends: chat, ask and eval use it; it reaches chat/ only for the
  history store, through asklog); commands, chat ↛ rag, memory, oneshot (their turns go through turn/);
- template.py imports no korani module;
- no core module imports the presentation layer (commands/, chat/repl.py,
  chat/view.py, console.py, cli.py);
- only the presentation layer prints (print(), sys.stdout/stderr.write, a rich Console);
- no import cycle between modules.

Run: python tools/import_graph.py [--edges]   (exit 1 when a wall is broken or a cycle exists)
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "korani_cli"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# area → areas it must never import
WALLS = {
    "search": {"chat", "train", "rag", "turn"},
    "rag": {"chat", "train", "turn"},
    "train": {"chat", "search", "turn"},
    "backends": {"search", "chat", "train", "turn"},
    "turn": {"train", "eval"},
    # ask's and chat's turns go through the answer layer (turn/): neither builds prompts, trims
    # memory or reads the answer core's events itself.
    "commands": {"rag", "memory", "oneshot"},
    "chat": {"rag", "memory", "oneshot"},
}
PRESENTATION = ("commands", "chat.repl", "chat.view", "console", "cli", "__main__", "helpfmt")
# A child process's line to its parent (export-gguf's converter runs in one), not output for a person.
PRINT_ALLOWED = {"train.export"}


@dataclass(frozen=True)
class Edge:
    source: str  # module, without the package prefix: "rag.answer"
    target: str
    line: int
    lazy: bool  # inside a function


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts) or "__init__"] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """`korani_cli.rag.answer` → `rag.answer`; a name that is not a module → its package."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    rest = name[len(PACKAGE) + 1 :]
    while rest and rest not in known:
        rest = rest.rpartition(".")[0]
    return rest or "__init__"


def edges(known: dict[str, Path] | None = None) -> list[Edge]:
    known = known or modules()
    found = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        lazy_lines = {
            n.lineno
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    prefix = ".".join([PACKAGE, *base, *(node.module.split(".") if node.module else [])])
                else:
                    prefix = node.module or ""
                # `from korani_cli.search import answer` names a module; `from x import func` its package
                names = [f"{prefix}.{alias.name}" for alias in node.names] or [prefix]
            for name in names:
                target = _resolve(name, known)
                if target is not None and target != module:
                    found.append(Edge(module, target, node.lineno, node.lineno in lazy_lines))
    return sorted(set(found), key=lambda e: (e.source, e.line, e.target))  # `from m import a, b` is one edge


def area(module: str) -> str:
    return module.split(".")[0]


def is_presentation(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PRESENTATION)


def wall_breaks(found: list[Edge]) -> list[str]:
    breaks = []
    for e in found:
        if area(e.target) in WALLS.get(area(e.source), ()):
            breaks.append(f"{e.source}:{e.line} imports {e.target} ({area(e.source)} ↛ {area(e.target)})")
        if e.source == "template":
            breaks.append(f"template:{e.line} imports {e.target} (template imports no korani module)")
        if not is_presentation(e.source) and is_presentation(e.target):
            breaks.append(
                f"{e.source}:{e.line} imports {e.target} (the core never imports the presentation layer)"
            )
    return sorted(set(breaks))


def printers(known: dict[str, Path] | None = None) -> list[str]:
    """Core modules that print: print(), sys.stdout/stderr.write, or a rich Console of their own."""
    known = known or modules()
    found = []
    for module, path in known.items():
        if is_presentation(module) or module in PRINT_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("print", "Console"):
                found.append(f"{module}:{node.lineno} calls {func.id}()")
            elif (
                isinstance(func, ast.Attribute)
                and func.attr == "write"
                and isinstance(func.value, ast.Attribute)
                and func.value.attr in ("stdout", "stderr")
            ):
                found.append(f"{module}:{node.lineno} writes to sys.{func.value.attr}")
    return found


def cycles(found: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in found:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="Also list every module → module edge.")
    args = parser.parse_args()
    known = modules()
    found = edges(known)
    areas: dict[str, set[str]] = {}
    for e in found:
        if area(e.source) != area(e.target):
            areas.setdefault(area(e.source), set()).add(area(e.target))
    print(
        f"{len(known)} modules, {len(found)} imports of korani modules "
        f"({sum(e.lazy for e in found)} inside functions)"
    )
    print("areas (→ what each imports):")
    for name in sorted(areas):
        print(f"  {name} → {', '.join(sorted(areas[name]))}")
    if args.edges:
        for e in sorted(found, key=lambda e: (e.source, e.line)):
            print(f"  {e.source}:{e.line} → {e.target}{' (lazy)' if e.lazy else ''}")
    problems = [f"cycle: {' ↔ '.join(c)}" for c in cycles(found)] + wall_breaks(found) + printers(known)
    print(f"{len(problems)} problem(s)")
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
