"""The house's layers point one way: settings at the bottom, then evaluation/ and storage/, then
workers/ (model loading and engines), then tasks/ (the app and everything about delivery), and the
CLI package on top. No module imports one of a layer above it, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Package of each folder, and its layer (a module may import its own layer and those below).
FOLDERS = {"evaluation": "nerfleet.evaluation", "storage": "nerfleet.storage", "workers": "nerfleet.workers",
           "tasks": "nerfleet.tasks", "nerfleet": "nerfleet"}  # fmt: skip
LAYERS = [
    ("nerfleet.settings", "nerfleet.registry"),
    ("nerfleet.evaluation",),
    ("nerfleet.storage",),
    ("nerfleet.workers",),
    ("nerfleet.tasks",),
    ("nerfleet",),
]


def layer(module: str) -> int | None:
    for i, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return i
    return None


def _modules(folder: str, package: str):
    """(path, module name) of every module in a folder and its subfolders (nerfleet/commands/)."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for folder, package in FOLDERS.items():
        for path, me in _modules(folder, package):
            mine = layer(me)
            upward += [
                f"{path.relative_to(ROOT)}:{line} imports {module}"
                for line, module in imports(path)
                if (theirs := layer(module)) is not None and theirs > mine
            ]
    assert not upward, "\n".join(upward)


def test_the_bottom_layer_imports_nothing_of_the_project():
    for name in ("settings", "registry"):
        assert [m for _, m in imports(ROOT / "nerfleet" / f"{name}.py") if m.startswith("nerfleet")] == []


def test_an_unknown_name_lists_the_known_ones():
    import pytest

    from nerfleet.evaluation.parsing import PARSERS
    from nerfleet.workers.catalog import CATALOG
    from nerfleet.workers.runtime import ENGINES

    with pytest.raises(LookupError, match="unknown engine 'fast': known engines: continuous, batched, simple"):
        ENGINES["fast"]
    with pytest.raises(LookupError, match="unknown structure 'xml': known structures: dict, json"):
        PARSERS["xml"]
    assert CATALOG.lookup("smollm2-135m-instruct") is CATALOG["smollm2"]
    from nerfleet.evaluation.prompts import PROMPTS, Prompt, load_prompt

    with pytest.raises(LookupError, match="unknown prompt 'v4': known prompts: v1, v2, v3"):
        PROMPTS["v4"]
    mine = Prompt("mine", "json", 'Return {"annotations": []} for: {clinical_text}')
    PROMPTS.register("mine")(lambda: mine)  # a prompt registered in code is a name like the built-in ones
    try:
        assert load_prompt("mine") is mine and load_prompt("mine+guided").guided
    finally:
        del PROMPTS["mine"]


def _module_level_imports(path: Path):
    """Imports run when the module is imported (not those inside functions)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_no_import_cycle_between_modules():
    modules = {me: path for folder, package in FOLDERS.items() for path, me in _modules(folder, package)}
    graph = {m: {i for i in _module_level_imports(p) if i in modules and i != m} for m, p in modules.items()}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join([*stack[stack.index(n) :], n]))
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def _deferred_import_groups(path: Path):
    """(first line, lines) of each run of consecutive import statements inside a function."""
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            for body in (getattr(node, f, None) for f in ("body", "orelse", "finalbody", "handlers")):
                group: list[ast.stmt] = []
                for stmt in [*(body if isinstance(body, list) else []), None]:
                    if isinstance(stmt, ast.Import | ast.ImportFrom):
                        group.append(stmt)
                    elif group:
                        yield group[0].lineno, range(group[0].lineno, group[-1].end_lineno + 1)
                        group = []


def test_an_import_inside_a_function_says_why():
    """An import inside a function defers something heavy (torch, transformers, an optional extra,
    the database layer for a command's ``--help``) and says so in a comment on the line above or
    beside it: the standard library and the project's light modules are imported at the top."""
    silent = []
    for folder, package in FOLDERS.items():
        for path, _ in _modules(folder, package):
            lines = path.read_text().splitlines()
            for first, span in _deferred_import_groups(path):
                above = lines[first - 2].strip()
                said = above.startswith("#") and not above[1:].strip()[:1].isdigit()  # "# 2. Corpus." says no why
                said = said or any("#" in lines[i - 1] for i in span)
                if not said:
                    silent.append(f"{path.relative_to(ROOT)}:{first}: {lines[first - 1].strip()}")
    assert not silent, "imports inside functions without a word why:\n" + "\n".join(sorted(set(silent)))


def test_the_apps_task_modules_load_without_torch():
    """Flower imports every task module of the app (as a worker does before it loads a model): none
    of them may pull in torch, which the deferred imports above exist to keep out."""
    import subprocess
    import sys

    code = (
        "import sys; from nerfleet.tasks.app import app; app.loader.import_default_modules(); "
        "print(sorted(m for m in ('torch', 'transformers', 'xgrammar') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "[]"
