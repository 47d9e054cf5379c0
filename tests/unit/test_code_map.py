"""docs/architecture.md's code map names every module of the package by its path, and every module path it names exists.

The code map is the table under "## Code map": one row per top-level module or package. A
package's row names each of its modules by its path inside the package (``publishing/envelope.py``
in the ``dispatch/`` row), a sub-package by its folder (``publishing/``). Anywhere in the document,
a name in backticks that looks like a module path of ours (``runtime/collector.py``,
``storage/``, ``test_reaper.py``) must exist: from ``kat_scheduler/`` or the repository's root,
a test file under ``tests/``, and in a package's row also from that package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kat_scheduler"
DOCUMENT = ROOT / "docs" / "architecture.md"
#: Names of files the document mentions that are not ours: KAT's plugin layout and its boefjes' code.
NOT_OURS = {"main.py", "normalize.py", "boefjes/boefjes/worker/manager.py"}
#: A module path in backticks: ``name.py``, ``package/``, ``package/module.py``, ``module.py:name``.
MODULE_PATH = re.compile(r"([A-Za-z_][\w.-]*(?:/[\w.-]+)*(?:\.py|/))(?::\w+)?")


@dataclass
class Row:
    """One row of the code map: the names in its first column and the text of the rest."""

    names: list[str]
    text: str

    @property
    def package(self) -> str:
        """The package the row describes (``"dispatch/"``), or ``""`` for the package's top level."""
        for name in self.names:
            if "/" in name:
                return name.split("/", 1)[0] + "/"
        return ""


def _module_paths(text: str) -> list[str]:
    paths = []
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # drawings, not code spans
    for ticked in re.findall(r"`([^`]+)`", prose):
        match = MODULE_PATH.fullmatch(ticked)
        if match:
            paths.append(match.group(1))
    return paths


def _sections() -> tuple[str, str]:
    """The code map's section, and the rest of the document."""
    text = DOCUMENT.read_text()
    before, after = text.split("## Code map", 1)
    code_map, rest = after.split("\n## ", 1) if "\n## " in after else (after, "")
    return code_map, before + rest


def _rows() -> list[Row]:
    rows = []
    for line in _sections()[0].splitlines():
        if not line.startswith("| `"):
            continue
        first, rest = line[1:].split("|", 1)
        rows.append(Row(re.findall(r"`([^`]+)`", first), rest))
    return rows


def _is_ours(path: Path) -> bool:
    return "__pycache__" not in path.parts and not path.name.startswith(".")


def _exists(name: str, *bases: Path) -> bool:
    if Path(name).name.startswith("test_") and name.endswith(".py") and "/" not in name:
        return any((ROOT / "tests").rglob(name))
    return any((base / name).exists() for base in bases)


def test_the_code_map_names_every_top_level_module_and_package() -> None:
    named = {name.split("/", 1)[0] + "/" if "/" in name else name for row in _rows() for name in row.names}
    top_level = {
        path.name + "/" if path.is_dir() else path.name
        for path in PACKAGE.iterdir()
        if _is_ours(path) and ((path / "__init__.py").exists() or path.suffix == ".py" or path.name == "py.typed")
    }
    assert top_level - named == set()


def test_every_module_is_named_in_its_package_row_by_its_path_in_the_package() -> None:
    names: dict[str, set[str]] = {}
    for row in _rows():
        if row.package:
            said_in_row = names.setdefault(row.package, set())
            said_in_row.update(name.removeprefix(row.package) for name in row.names)
            said_in_row.update(_module_paths(row.text))
    missing = []
    for package in sorted(p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        for path in sorted((PACKAGE / package).rglob("*.py")):
            relative = path.relative_to(PACKAGE / package)
            if (
                not _is_ours(path)
                or relative == Path("__init__.py")
                or relative.parts[:2] == ("migrations", "versions")
            ):
                continue
            said = names.get(package, set())
            if path.name == "__init__.py":
                named = f"{relative.parent.as_posix()}/" in said or relative.as_posix() in said
            else:
                named = relative.as_posix() in said
            if not named:
                missing.append(f"{package}{relative.as_posix()}")
    assert missing == []


def test_every_module_path_the_document_names_exists() -> None:
    unknown = []
    for row in _rows():
        for name in row.names:
            if not _exists(name, PACKAGE, ROOT):
                unknown.append(f"code map: {name}")
        for name in _module_paths(row.text):
            if name not in NOT_OURS and not _exists(name, PACKAGE / row.package, PACKAGE, ROOT):
                unknown.append(f"code map, {row.package or 'top level'}: {name}")
    for name in _module_paths(_sections()[1]):
        if name not in NOT_OURS and not _exists(name, PACKAGE, ROOT):
            unknown.append(name)
    assert unknown == []
