"""The tree keeps its shape: the README's Layout lists every module with its docstring's first
line, no module grows past 450 lines, and the core stays pure (also linted: TID251)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Modules the Layout lists: the server package and the test support package.
LISTED = ("server", "host-client", "tests/support")
MOST_LINES = 450
# The core: server/*.py but db.py (kept at the top, where the project specified it) and the
# command line, which wires the layers together.
OUTSIDE_CORE = {"db.py", "__main__.py"}
FORBIDDEN_IN_CORE = (
    "sqlalchemy",
    "asyncpg",
    "alembic",
    "starlette",
    "uvicorn",
    "server.storage",
    "server.web",
)


def modules() -> list[Path]:
    found = []
    for folder in LISTED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if path.name == "__init__.py" or "migrations" in relative.parts:
                continue
            found.append(relative)
    return found


def summary(path: Path) -> str:
    docstring = ast.get_docstring(ast.parse((ROOT / path).read_text())) or ""
    return docstring.strip().splitlines()[0] if docstring.strip() else ""


def layout_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None, "README's Layout has no code block"
    return block.group(1).splitlines()


def expected_line(path: Path) -> str:
    return f"{path.as_posix():<34} {summary(path)}"


def test_every_module_is_in_the_readme_layout_with_its_docstring() -> None:
    """Each module appears in the Layout as `path  first docstring line`, and nothing else
    named .py does, so the map cannot drift from the tree."""
    lines = layout_lines()
    listed = {
        first
        for first in (line.split()[0] for line in lines if line.split())
        if first.endswith(".py") and first.startswith(LISTED)
    }
    wanted = modules()
    missing = [expected_line(p) for p in wanted if expected_line(p) not in lines]
    assert not missing, "README Layout lacks (or has a stale line for):\n" + "\n".join(missing)
    stale = listed - {p.as_posix() for p in wanted}
    assert not stale, f"README Layout lists modules that do not exist: {sorted(stale)}"
    assert all(summary(p) for p in wanted), "every module has a docstring"


def test_no_module_is_over_the_size_limit() -> None:
    """One concept per module: none over 450 lines."""
    sizes = {p.as_posix(): len((ROOT / p).read_text().splitlines()) for p in modules()}
    over = {path: size for path, size in sizes.items() if size > MOST_LINES}
    assert not over, f"over {MOST_LINES} lines: {over}"


def test_the_core_imports_no_framework_driver_or_upper_layer() -> None:
    """server/*.py (bar db.py and __main__) import none of the web or storage stack."""
    for path in sorted((ROOT / "server").glob("*.py")):
        if path.name in OUTSIDE_CORE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not name.startswith(FORBIDDEN_IN_CORE), f"{path.name} imports {name}"
