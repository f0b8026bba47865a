"""The shape of the package (issue 11): layers without upward imports or circles, short
functions, and concepts defined once, with the README's method table derived from the registry."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

from deflare_cli import settings as settings_module
from deflare_cli.methods import METHODS

PACKAGE = Path(__file__).resolve().parents[1] / "deflare_cli"
README = PACKAGE.parent / "README.md"

# Lowest first. A module may import from its own layer (without circles) and the layers below.
LAYERS = [
    {"__init__", "errors", "events", "progress"},
    {"settings"},
    {"codec", "devices", "model", "tiles", "budget"},
    {"io"},
    {"checkpoint", "metrics", "baselines", "engines", "stats"},
    {"synth", "train", "infer", "calibrate", "methods", "evaluate", "viz"},
    {"cli", "__main__"},
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported_modules(name: str) -> set[str]:
    """The package's own modules that ``name`` imports anywhere (top level or in functions)."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in MODULES and c != name)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else "__init__"
    assert top in LAYER_OF, f"{name}: add its package or module to a layer in LAYERS"
    return LAYER_OF[top]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_imports(name: str) -> None:
    upward = [target for target in GRAPH[name] if layer(target) > layer(name)]
    assert not upward, f"{name} (layer {layer(name)}) imports from higher layers: {upward}"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of a graph (module -> imported modules), or None."""
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (circle := visit(target, [*path, target])):
                return circle
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (circle := visit(name, [name])):
            return circle
    return None


def test_no_import_circles() -> None:
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_checker_finds_a_planted_circle() -> None:
    # The old train -> debug -> train pair, behind a third module.
    planted = {"cli": {"train"}, "train": {"debug"}, "debug": {"viz", "train"}, "viz": set()}
    assert find_circle(planted) == ["train", "debug", "train"]


def test_functions_fit_on_a_screen() -> None:
    """No function over 60 lines; a Typer command counts from its body (its signature is the
    list of options)."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            command = name == "deflare_cli.cli" and any(
                "command" in ast.unparse(decorator) for decorator in node.decorator_list
            )
            first = node.body[0].lineno if command else node.lineno
            if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                long.append(f"{name}.{node.name}: {node.end_lineno - first + 1} lines")
    assert not long, long


def settings_models() -> list[type[BaseModel]]:
    return [
        model
        for _, model in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(model, BaseModel) and model.__module__ == settings_module.__name__
    ]


@pytest.mark.parametrize(
    "field", ["sensor_size", "time_window_ms", "compression", "device", "precision", "workers"]
)
def test_shared_settings_are_declared_once(field: str) -> None:
    owners = [model.__name__ for model in settings_models() if field in model.model_fields]
    assert len(owners) == 1, f"{field} is declared in {owners}: compose the one block instead"


def test_readme_method_table_follows_the_registry() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    for method in METHODS.values():
        expected = f"| `{method.name}` | {method.help} |"
        assert any(row.startswith(expected) for row in rows), f"README lacks: {expected}"
