"""The package is cut along the data flow: `lake/` at the bottom, then `ingest/`, `silver/`, `gold/`, with
`defs/` and `serving/` on top. No module imports a layer above its own (any import, also one inside a
function), and the product package never imports the dev tooling (`medlake_dev`) when it is imported."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import medlake_assets

PACKAGE = Path(medlake_assets.__file__).resolve().parent

# The layers each layer must not import.
ABOVE = {
    "lake": {"ingest", "silver", "gold", "defs", "serving"},
    "ingest": {"silver", "gold", "defs", "serving"},
    "silver": {"gold", "defs", "serving"},
    "gold": {"defs"},
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    at_import_time: bool  # not inside a function body


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(importer, a.name, child.lineno, not in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package.rsplit(".", child.level - 1)[0] if child.level else ""
                imported = ".".join(part for part in (base, child.module or "") if part)
                found.append(Import(importer, imported, child.lineno, not in_function))
            visit(
                child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            )

    visit(ast.parse(path.read_text(), filename=str(path)), in_function=False)
    return found


def all_imports() -> list[Import]:
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path)]


def layer(module: str) -> str | None:
    top, _, rest = module.partition(".")
    return rest.partition(".")[0] if top == "medlake_assets" and rest else None


def test_no_module_imports_a_layer_above_its_own():
    imports = all_imports()
    # The walk sees the package: the lake handle imports its settings.
    assert any(
        i.importer == "medlake_assets.lake" and i.imported == "medlake_assets.lake.settings" for i in imports
    )
    upward = sorted(
        f"{i.importer} -> {i.imported} (line {i.line})"
        for i in imports
        if layer(i.imported) in ABOVE.get(layer(i.importer) or "", set())
    )
    assert upward == []


def test_the_product_package_imports_no_dev_tooling_when_imported():
    imports = all_imports()
    # The command adds the dev commands from inside a function: the walk sees that import.
    assert any(i.importer == "medlake_assets.cli" and i.imported == "medlake_dev.cli" for i in imports)
    at_import_time = sorted(
        f"{i.importer} -> {i.imported} (line {i.line})"
        for i in imports
        if i.at_import_time and (i.imported == "medlake_dev" or i.imported.startswith("medlake_dev."))
    )
    assert at_import_time == []
