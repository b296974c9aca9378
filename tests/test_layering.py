"""Imports flow one way: reward_server <- recipe.task <- recipe.verl_runtime <- recipe.samr1, recipe.veteran <-
recipe.evaluate; recipe.task imports neither verl nor Ray.

data_prep may use reward_server and recipe.task; no product module uses the tests' doubles in tests/support.
Imports are read from the source (ast), lazy ones inside functions included, so nothing here is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("recipe", "reward_server", "data_prep")
# What every recipe and the evaluator build on: the task, and the project's side of verl.
SHARED = ("recipe.task", "recipe.verl_runtime")

# (importing package, imported package): an import of the second (or a submodule) from the first is forbidden.
FORBIDDEN = [
    ("reward_server", "recipe"),
    ("reward_server", "data_prep"),
    *(
        (shared, above)
        for shared in SHARED
        for above in ("data_prep", "recipe.samr1", "recipe.veteran", "recipe.evaluate")
    ),
    *(("recipe.task", framework) for framework in ("verl", "ray", "recipe.verl_runtime", "recipe.cpu")),
    ("data_prep", "recipe.verl_runtime"),
    ("recipe.samr1", "recipe.evaluate"),
    ("recipe.veteran", "recipe.evaluate"),
    ("recipe.evaluate", "data_prep"),
    ("data_prep", "recipe.samr1"),
    ("data_prep", "recipe.veteran"),
    ("data_prep", "recipe.evaluate"),
    *((package, double) for package in PRODUCT for double in ("support", "tests")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PRODUCT for path in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against its package ``name``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # ``from a import b`` may import the submodule a.b: count both.
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


IMPORTS = {name: imported_modules(name, path) for name, path in product_modules().items()}


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_no_forbidden_import(importer, imported):
    offenders = sorted(
        f"{name} imports {module}"
        for name, modules in IMPORTS.items()
        if within(name, importer)
        for module in modules
        if within(module, imported)
    )
    assert offenders == []


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import sibling\nfrom ..up import thing\n\ndef f():\n    import data_prep.schema\n")
    found = imported_modules("recipe.task.mod", path)
    assert {"recipe.task.sibling", "recipe.up.thing", "data_prep.schema"} <= found


def test_the_smoke_imitation_is_gone():
    for module in ("smoke_setup", "smoke_policies", "logprob"):
        assert not [path for path in (ROOT / "recipe").rglob(f"{module}.py")], module
    assert (
        not (ROOT / "recipe" / "samr1" / "smoke.py").exists()
        and not (ROOT / "recipe" / "veteran" / "smoke.py").exists()
    )


def test_every_shared_module_is_used_by_the_product():
    """A shared module that only tests import belongs in tests/support."""
    unused = []
    for name in IMPORTS:
        if not any(within(name, shared) and name != shared for shared in SHARED):
            continue
        users = [other for other, modules in IMPORTS.items() if other != name and name in modules]
        if not users:
            unused.append(name)
    assert unused == []


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), and modules that import themselves."""
    graph = {name: sorted(m for m in modules if m in imports and m != name) for name, modules in imports.items()}
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_circle_among_the_projects_modules():
    """A circle makes the modules in it one module in disguise (and imports order-dependent); an import only for
    type checking counts too, since the modules still read each other."""
    assert import_cycles(IMPORTS) == []


def test_a_circle_is_found():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
