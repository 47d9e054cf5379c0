"""docs/architecture.md's code map names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kat_scheduler"


def _code_map_rows() -> dict[str, str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first, rest = line[1:].split("|", 1)
        for name in re.findall(r"`([^`]+)`", first):
            rows[name] = rest
    return rows


def _top_level() -> set[str]:
    names = set()
    for path in PACKAGE.iterdir():
        if path.name.startswith((".", "__pycache__")):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.add(path.name + "/")
        elif path.suffix == ".py" or path.name == "py.typed":
            names.add(path.name)
    return names


def test_the_code_map_names_every_top_level_module_and_package_and_nothing_else() -> None:
    rows = _code_map_rows()
    named = {name.split("/", 1)[0] + "/" if "/" in name else name for name in rows}
    assert named - {"celeryconfig.py"} == _top_level()


def _descriptions_per_package() -> dict[str, str]:
    """Each package's description: its own row plus the rows of its modules named at the top level."""
    packages: dict[str, str] = {}
    for name, text in _code_map_rows().items():
        if "/" not in name:
            continue
        package, module = name.split("/", 1)
        packages[package + "/"] = packages.get(package + "/", "") + f" `{module}` {text}"
    return packages


def test_every_module_of_a_package_is_described_in_its_row() -> None:
    missing = []
    for package, description in _descriptions_per_package().items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            relative = path.relative_to(PACKAGE / package)
            if relative == Path("__init__.py") or "migrations" in relative.parts:
                continue
            if path.name == "__init__.py":
                mentioned = f"`{relative.parent.as_posix()}/`" in description
            else:
                mentioned = f"`{relative.as_posix()}`" in description or f"`{path.name}`" in description
            if not mentioned:
                missing.append(f"{package}{relative.as_posix()}")
    assert missing == []
