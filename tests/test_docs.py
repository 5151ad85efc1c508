"""The README and docs/ stay inside the repository and say true things about it: every link
resolves to a file here, and every test or benchmark the safety case and the standards table
name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "firmware" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# `tests/x.py`, `tests/x.py::test_name`, and `::test_name` (the same file as the one before it)
REFERENCE = re.compile(r"`((?:tests|hil_tests|bench)/[\w/]+\.py)?(?:::(\w+))?`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves_inside_the_repository(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            broken.append(target)
    assert broken == [], f"{doc.name}: links that do not resolve inside the repository"


@pytest.mark.parametrize("name", ["safety.md", "standards.md"])
def test_every_test_the_safety_case_names_exists(name: str) -> None:
    missing = []
    for line in (REPO / "docs" / name).read_text(encoding="utf-8").splitlines():
        current: Path | None = None
        for path, function in REFERENCE.findall(line):
            if path:
                current = REPO / path
                if not current.exists():
                    missing.append(path)
                    continue
            defined = rf"^def {function}\("
            if (
                function
                and current is not None
                and current.exists()
                and not re.search(defined, current.read_text(), re.MULTILINE)
            ):
                missing.append(f"{current.relative_to(REPO)}::{function}")
    assert missing == []


def test_nothing_in_the_repository_points_outside_it() -> None:
    outside = []
    for path in [*DOCS, *REPO.glob("gateway/**/*.py"), *REPO.glob("config/**/*.toml")]:
        if re.search(r"DOMAIN\.md|\.\./shared/", path.read_text(encoding="utf-8")):
            outside.append(str(path.relative_to(REPO)))
    assert outside == []
