"""requirements.txt is a complete lock: the image installs it and then the package with --no-deps.

Every requirement declared in setup.cfg (with its extras) and, recursively, every requirement of
each locked distribution that applies on this interpreter must be pinned ``==`` in
requirements.txt, or the image starts without it (kombu's ``redis`` extra brings ``packaging``;
without it ``kombu.transport.redis`` does not import). The requirements of a distribution are
read from its installed metadata, so this environment must hold the locked versions.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import re
from collections import deque
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)(?:\s*;\s*(?P<marker>.+))?$")


def read_lock(path: Path) -> dict[NormalizedName, Version]:
    """``name==version`` lines of a requirements file (an environment marker may follow: a pin that
    does not apply on this interpreter is left out); anything else but comments is an error."""
    pins: dict[NormalizedName, Version] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if match is None:
            raise AssertionError(f"{path.name}:{number}: not an exact pin (name==version): {raw.strip()!r}")
        marker = Requirement(f"{match['name']}; {match['marker']}").marker if match["marker"] else None
        if marker is not None and not marker.evaluate():
            continue
        pins[canonicalize_name(match["name"])] = Version(match["version"])
    return pins


def declared_requirements(setup_cfg: Path) -> list[Requirement]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser.get("options", "install_requires").splitlines()
    return [Requirement(line) for line in (entry.strip() for entry in lines) if line]


def applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether ``requirement`` holds on this interpreter for a distribution installed with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras})


def lock_problems(lock_path: Path, setup_cfg: Path) -> list[str]:
    """Why ``lock_path`` would not install everything setup.cfg needs (empty: it would)."""
    pins = read_lock(lock_path)
    problems: list[str] = []
    todo: deque[tuple[Requirement, str]] = deque((r, "setup.cfg") for r in declared_requirements(setup_cfg))
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    missing: set[NormalizedName] = set()
    while todo:
        requirement, wanted_by = todo.popleft()
        name = canonicalize_name(requirement.name)
        pinned = pins.get(name)
        if pinned is None:
            if name not in missing:  # named once, with the first distribution that needs it
                missing.add(name)
                problems.append(f"{requirement.name} is not pinned (required by {wanted_by}: {requirement})")
            continue
        if not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{name}=={pinned} does not satisfy {wanted_by}: {requirement}")
        extras = frozenset(canonicalize_name(extra) for extra in requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name}=={pinned} is not installed here, so its requirements cannot be followed")
            continue
        label = f"{name}[{','.join(sorted(extras))}]" if extras else name
        for line in requires:
            child = Requirement(line)
            if applies(child, extras):
                todo.append((child, label))
    return problems


def test_every_declared_dependency_and_all_it_needs_is_pinned_in_the_lock() -> None:
    assert lock_problems(ROOT / "requirements.txt", ROOT / "setup.cfg") == []


def test_this_environment_holds_the_locked_runtime_versions() -> None:
    """The check above reads each distribution's requirements from what is installed here."""
    differ: dict[str, str] = {}
    for name, pinned in read_lock(ROOT / "requirements.txt").items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            differ[name] = f"locked {pinned}, not installed"
            continue
        if installed != pinned:
            differ[name] = f"locked {pinned}, installed {installed}"
    assert differ == {}, "rebuild the environment from requirements-dev.txt (make install)"


def test_a_lock_that_leaves_out_a_transitive_dependency_is_caught(tmp_path: Path) -> None:
    # The lock as it was before it was compiled: only the direct dependencies.
    lock = (ROOT / "requirements.txt").read_text().splitlines()
    left_out = {"packaging", "vine", "click"}
    trimmed = tmp_path / "requirements.txt"
    trimmed.write_text("\n".join(line for line in lock if line.split("==")[0].lower() not in left_out) + "\n")

    problems = lock_problems(trimmed, ROOT / "setup.cfg")

    assert any(p.startswith("packaging is not pinned (required by ") for p in problems), problems
    assert any(p.startswith("vine is not pinned") for p in problems), problems
    assert any(p.startswith("click is not pinned (required by celery") for p in problems), problems


def test_the_dev_lock_keeps_every_runtime_pin() -> None:
    runtime = read_lock(ROOT / "requirements.txt")
    dev = read_lock(ROOT / "requirements-dev.txt")
    changed = {
        name: (str(version), str(dev.get(name))) for name, version in runtime.items() if dev.get(name) != version
    }
    assert changed == {}, "runtime pin -> dev lock's"
