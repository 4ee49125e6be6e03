"""The house rules of fer_hf/, checked on its source: imports only go down (entry modules -> trainer -> rooms ->
core), nothing imports an entry module, there is no import circle, and the README's layout table lists the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fer_hf"
README = PACKAGE.parent / "README.md"
CORE = {"labels", "config", "cli", "run_dir", "model_files", "hashing", "metrics", "hub", "weights", "modeling",
        "timm_module", "metric", "default_model", "ingredients", "allocator", "adafactor"}
ROOMS = {"data", "inference", "report", "sweep"}
ENTRY = {"train", "evaluate", "predict", "push", "export", "plots", "release", "app"}
RANK = {**dict.fromkeys(CORE, 0), **dict.fromkeys(ROOMS, 1), "trainer": 2, **dict.fromkeys(ENTRY, 3)}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """fer_hf modules this file imports, at any depth (imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fer_hf"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from fer_hf import cli`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fer_hf"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_place():
    unplaced = sorted(m for m in graph() if top(m) and top(m) not in RANK)
    assert not unplaced, f"add these to the layout (core, a room, trainer or an entry module): {unplaced}"


def test_imports_only_go_down_and_never_into_an_entry_module():
    upward = []
    for module, imported in graph().items():
        for target in imported:
            if not top(module) or not top(target) or module.startswith("fer_hf.sweep.") and target == "fer_hf.sweep":
                continue
            if top(target) in ENTRY and target != module:
                upward.append(f"{module} -> {target} (entry module)")
            elif RANK[top(target)] > RANK[top(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports going up:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_readme_layout_table_lists_each_folder_once():
    section = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)`", section, flags=re.M)
    folders = sorted(f"fer_hf/{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert sorted(r for r in rows if r.startswith("fer_hf/") and r.endswith("/")) == folders
    top_level = sorted(f"{p.name}/" for p in PACKAGE.parent.iterdir()
                       if p.is_dir() and p.name in {"configs", "sweeps", "benchmarks", "notebooks", "tests"})
    assert set(top_level) <= set(rows)
