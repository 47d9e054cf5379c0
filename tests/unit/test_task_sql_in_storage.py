"""Every statement on ``tasks`` and ``unpublished_tasks`` lives in ``kat_scheduler/storage/`` (#17).

No other module of the package builds SQL on those tables: it uses ``TaskRow`` or
``UnpublishedTask`` (or their tables) only in type annotations, and no ``text(...)`` it runs names
them. A module that needs to read or change tasks asks a store (``TaskStore``, ``TaskViews``,
``WaitingStore``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kat_scheduler"
STORAGE = PACKAGE / "storage"
#: The ORM classes of the two tables.
MODELS = {"TaskRow", "UnpublishedTask"}
#: The tables' names, as a statement or a table look-up would spell them.
TABLES = {"tasks", "unpublished_tasks"}
#: SQL that reads or writes one of the tables.
SQL_ON_TASKS = re.compile(r"\b(?:from|join|update|into|table|exists)\s+(?:unpublished_)?tasks\b", re.IGNORECASE)
#: Modules that use a model outside an annotation without running a statement on it, and why.
NO_STATEMENT = {
    "cli.py": "reads the input_ooi column's length to check --ooi before any I/O",
}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """The nodes inside type annotations (arguments, returns, annotated assignments)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]
            roots.extend(arg.annotation for arg in every if arg is not None and arg.annotation is not None)
            if node.returns is not None:
                roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def sql_on_tasks(source: str) -> list[str]:
    """What in ``source`` (a module's text) reads or writes the tasks tables, one line each."""
    tree = ast.parse(source)
    in_annotations = _annotation_nodes(tree)
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        line, column = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        where = f"line {line}"
        if isinstance(node, ast.Name) and node.id in MODELS and id(node) not in in_annotations:
            found.append((line, column, f"{where}: uses {node.id} outside a type annotation"))
        elif isinstance(node, ast.Attribute) and node.attr in MODELS and id(node) not in in_annotations:
            found.append((line, column, f"{where}: uses {node.attr} outside a type annotation"))
        elif isinstance(node, ast.Call) and _called_name(node) in {"text", "table", "Table"}:
            for argument in node.args[:1]:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    named = argument.value.strip() in TABLES or SQL_ON_TASKS.search(argument.value)
                    if named:
                        found.append((line, column, f"{where}: {_called_name(node)}({argument.value.strip()[:60]!r})"))
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in TABLES:
            found.append((line, column, f"{where}: looks up the table {node.slice.value!r}"))
    return [text for _, _, text in sorted(found)]


def _modules_outside_storage() -> list[Path]:
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if STORAGE not in path.parents and "__pycache__" not in path.parts and ".venv" not in path.parts
    )


def test_no_module_outside_storage_runs_sql_on_the_tasks_tables() -> None:
    offenders: list[str] = []
    for path in _modules_outside_storage():
        name = str(path.relative_to(PACKAGE))
        if name in NO_STATEMENT:
            continue
        offenders.extend(f"kat_scheduler/{name}, {line}" for line in sql_on_tasks(path.read_text()))
    assert not offenders, "SQL on tasks outside kat_scheduler/storage/ (ask a store instead):\n" + "\n".join(offenders)


def test_the_modules_let_off_exist_and_still_use_a_model() -> None:
    """An exception that no longer applies goes: the module exists and still names a model."""
    for name in NO_STATEMENT:
        assert sql_on_tasks((PACKAGE / name).read_text()), f"kat_scheduler/{name} no longer needs its exception"


def test_the_scan_names_statements_and_table_uses_but_not_annotations() -> None:
    source = """
from sqlalchemy import select, text
from kat_scheduler.storage.tables import TaskRow, UnpublishedTask, table_of

def shown(row: TaskRow) -> TaskRow | None:
    kept: list[UnpublishedTask] = []
    return row

def counted(conn):
    conn.execute(select(TaskRow.id))
    conn.execute(text("UPDATE tasks SET status = 'queued'"))
    conn.execute(text("DELETE FROM unpublished_tasks"))
    conn.execute(text("SELECT version_num FROM alembic_version"))
    return table_of(UnpublishedTask), metadata.tables["tasks"]
"""
    assert sql_on_tasks(source) == [
        "line 10: uses TaskRow outside a type annotation",
        "line 11: text(\"UPDATE tasks SET status = 'queued'\")",
        "line 12: text('DELETE FROM unpublished_tasks')",
        "line 14: uses UnpublishedTask outside a type annotation",
        "line 14: looks up the table 'tasks'",
    ]
