"""The layout's import rules, read from the source (README, "Architecture").

Every import counts: module level, inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "pipeline"

#: Modules the quality gate may not import: it judges numbers and does no I/O.
IO_MODULES = ("os", "io", "pathlib", "shutil", "tomllib", "asyncio", "socket", "sqlite3",
              "aiohttp", "pyarrow", "pandas", "PIL", "duckdb", "psycopg")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, absolute (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    """pipeline module -> the modules it imports."""
    return {_module_name(p): set(_imports(p)) for p in LIBRARY.rglob("*.py")}


GRAPH = _graph()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(source: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{mod} imports {target}" for mod, targets in GRAPH.items()
                  if _within(mod, source) for target in targets
                  if any(_within(target, f) for f in forbidden))


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("pipeline", ("jobs", "click")),  # the library never reaches the CLI
        ("pipeline.client", ("pipeline.engine",)),  # client and engine share only api/
        ("pipeline.engine", ("pipeline.client",)),
        ("pipeline.api", ("pipeline.client", "pipeline.engine", "pipeline.runs",
                          "pipeline.enroll", "pipeline.audit", "pipeline.frame",
                          "pipeline.ledger")),  # the contract depends on nothing else
        ("pipeline.enroll.gate", (*IO_MODULES, "pipeline.runs.images", "pipeline.runs.manifest",
                                  "pipeline.runs.outcomes", "pipeline.runs.rundir",
                                  "pipeline.client", "pipeline.engine")),  # the gate: no I/O
        ("pipeline.frame", ("pipeline.enroll", "pipeline.audit", "pipeline.ledger")),
        ("pipeline.runs", ("pipeline.enroll", "pipeline.audit", "pipeline.ledger",
                           "pipeline.frame", "pipeline.client", "pipeline.engine")),
        ("pipeline.enroll", ("pipeline.engine", "pipeline.audit")),  # jobs beside each other
        ("pipeline.audit", ("pipeline.engine",)),
        ("pipeline.ledger", ("pipeline.engine", "pipeline.audit")),
        ("pipeline.frame", ("pipeline.engine",)),
    ],
    ids=["library-not-cli", "client-not-engine", "engine-not-client", "api-alone",
         "gate-no-io", "frame-below-jobs", "runs-below-jobs", "enroll", "audit", "ledger",
         "frame-not-engine"],
)
def test_forbidden_imports(source: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(source, forbidden) == []


def test_the_rules_see_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    probe = LIBRARY / "enroll" / "job.py"
    found = set(_imports(probe))
    assert "pipeline.client.budget" in found  # a module-level import
    assert "pipeline.enroll.gate.choose_face" in found  # inside a method
    assert any(_within(t, "pipeline.engine.state") for t in GRAPH["pipeline.engine.v3"])


def test_no_import_cycles_between_library_modules() -> None:
    modules = set(GRAPH)

    def owner(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {o for t in GRAPH[m] if (o := owner(t)) and o != m
                 and not _within(m, o)}  # a module may import its own package
             for m in modules}
    cycles = []
    for start in sorted(modules):  # a path back to `start` is a cycle through it
        seen, stack = set(), [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


def test_every_library_folder_is_a_package_in_the_repository() -> None:
    import subprocess

    folders = {p.parent for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert missing == []  # a folder without it is a namespace package find_packages skips
    # .gitignore must not hide a module (an ignored 'runs/' once did): git lists none.
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard",
                              "pipeline"], cwd=ROOT, capture_output=True, text=True).stdout
    assert [line for line in ignored.split() if line.endswith(".py")] == []
