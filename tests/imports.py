"""The project's import graph, read from the source (AST), for the architecture tests.

    python -m tests.imports            # prints every module of kd/ and stages/ with its imports
    python -m tests.imports stages.teacher   # the dvc.yaml deps that cover its transitive imports

Every `import` counts, also one inside a function (lazy imports still run), except those under
`if TYPE_CHECKING:` (annotations only, never executed).
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kd", "stages")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file that defines `module` (a package's __init__.py), or None if not ours."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def all_modules(root: Path = ROOT) -> list[str]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.append(prefix)
            names.extend(f"{prefix}.{a.name}" for a in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


@cache
def imports_of(module: str, root: Path = ROOT) -> frozenset[str]:
    """Modules of kd/ and stages/ that `module` imports directly (anywhere in its code)."""
    path = module_file(module, root)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for name in _imported_names(tree, module, path.name == "__init__.py"):
        if name.split(".")[0] in PACKAGES and module_file(name, root) is not None:
            found.add(name)
    found.discard(module)
    return frozenset(found)


def third_party_imports(module: str, root: Path = ROOT) -> frozenset[str]:
    """Top-level names of every other package `module` imports (mlflow, torch, ...)."""
    path = module_file(module, root)
    tree = ast.parse(path.read_text(), str(path))
    return frozenset(n.split(".")[0] for n in _imported_names(tree, module,
                                                              path.name == "__init__.py")
                     if n and n.split(".")[0] not in PACKAGES)


def parents(module: str) -> list[str]:
    """The packages Python runs before `module`: kd.train.loop -> kd, kd.train."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(module: str, root: Path = ROOT) -> set[str]:
    """`module` and everything it runs on import or call: its imports, theirs, and every
    package __init__ on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or module_file(m, root) is None:
            continue
        seen.add(m)
        todo.extend(imports_of(m, root))
        todo.extend(parents(m))
    return seen


def closure_files(module: str, root: Path = ROOT) -> list[str]:
    return sorted(module_file(m, root).relative_to(root).as_posix() for m in closure(module, root))


def find_cycle(root: Path = ROOT) -> list[str] | None:
    """One import cycle among our modules (as a list of modules), or None."""
    graph = {m: imports_of(m, root) for m in all_modules(root)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def code_deps(module: str, root: Path = ROOT) -> list[str]:
    """The smallest dvc.yaml deps that cover `module`'s closure exactly: a package directory
    when every file in it is used, else its files one by one."""
    files = set(closure_files(module, root))
    out: list[str] = []
    for f in sorted(files):
        d = str(Path(f).parent)
        whole = {p.relative_to(root).as_posix() for p in (root / d).glob("*.py")}
        if d not in PACKAGES and whole <= files:
            if d not in out:
                out.append(d)
        else:
            out.append(f)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print("\n".join(code_deps(sys.argv[1])))
    else:
        for m in all_modules():
            print(f"{m}: {', '.join(sorted(imports_of(m))) or '-'}")
