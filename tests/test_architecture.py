"""The package layout is the pipeline: a module may import only from its own stage or earlier ones.

docs/architecture.md draws the same order. Imports inside functions count too: a lazy import is
still a dependency, only a cheaper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mcuprune

PACKAGE = Path(mcuprune.__file__).resolve().parent

# Stages in pipeline order; a module of stage i may import stages 0..i. errors and resources are the
# base every stage may use; the package's __init__ (the public API) and the CLI sit on top.
STAGES = ("model", "frontend", "train", "quantize", "compress", "codegen", "target", "device", "controller", "cli")
BASE = ("errors", "resources")


def stage_of(module: str) -> int:
    """Stage index of a dotted module name inside mcuprune (base modules are -1)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in BASE:
        return -1
    if head in ("__main__", "__init__"):
        return STAGES.index("cli")
    return STAGES.index(head)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every mcuprune import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mcuprune.")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == "mcuprune":  # from mcuprune import x: x is the module (or __version__)
                found += [(node.lineno, f"mcuprune.{a.name}") for a in node.names if a.name != "__version__"]
            elif base.startswith("mcuprune."):
                found.append((node.lineno, base))
    return found


def test_stages_cover_the_package() -> None:
    heads = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py") or (p / "__init__.py").is_file()}
    assert heads <= set(STAGES) | set(BASE) | {"__main__", "__init__"}, heads - set(STAGES) - set(BASE)


def test_no_module_imports_from_a_later_stage() -> None:
    back_edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for line, target in imported_modules(path):
            if stage_of(target) > stage_of(name):
                back_edges.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({name}) imports {target}")
    assert not back_edges, "imports from a later stage:\n" + "\n".join(back_edges)
