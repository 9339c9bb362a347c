"""The tlpipe modules a script imports, directly or through other tlpipe modules (static imports,
including those inside functions), as repository-relative file paths."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {m for m in found if m == "tlpipe" or m.startswith("tlpipe.")}


def import_closure(script: str | Path) -> set[str]:
    todo, seen = [REPO / script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                file = _module_file(".".join(parts[:i]))
                if file is not None:
                    todo.append(file)
    return {p.relative_to(REPO).as_posix() for p in seen}
