"""The product does not need the tooling package (issue 23, item 5).

`services/` never imports `tooling/`, except the `incidents` command (services/cli.py),
inside the bodies of its development commands; the image copies `services/` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tooling_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    def names(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.ImportFrom):
            return [node.module or ""]
        return [alias.name for alias in node.names]

    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(name.split(".")[0] == "tooling" for name in names(node))
    ]


def _inside_functions(tree: ast.AST) -> set[int]:
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }


def test_the_product_imports_tooling_only_inside_the_cli_commands() -> None:
    found = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lazy = _inside_functions(tree) if path == ROOT / "services" / "cli.py" else set()
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in _tooling_imports(tree)
            if id(node) not in lazy
        ]
    assert found == []


def test_the_cli_reaches_tooling_from_its_development_commands() -> None:
    tree = ast.parse((ROOT / "services" / "cli.py").read_text(encoding="utf-8"))
    modules = {node.module for node in _tooling_imports(tree) if isinstance(node, ast.ImportFrom)}
    expected = {"tooling.stack", "tooling.demo", "tooling.chaos", "tooling.traces"}
    assert expected | {"tooling.bench.runner"} <= modules


def test_the_image_copies_the_product_and_not_the_tooling() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert "COPY services ./services" in copies
    assert not [line for line in copies if "tooling" in line]
    assert not [
        path
        for path in (ROOT / "deploy").rglob("*")
        if path.is_file() and "tooling" in path.read_text(encoding="utf-8", errors="replace")
    ]
