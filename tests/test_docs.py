"""The repository owns its specs: every ``.md`` file a tracked file names exists in the
repository, and every ``docs/<page>.md §n`` citation names a section that page has."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = (".py", ".md", ".toml")
# A name ending in .md, as a path or a bare file name (URLs are dropped before matching).
_MD_NAME = re.compile(r"[A-Za-z0-9_./<>-]*[A-Za-z0-9_-]\.md\b")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
# ``docs/kpis.md §3.1``, ``kpis.md §4``, ``[wire-format.md](wire-format.md) §7.1``.
_CITATION = re.compile(r"([A-Za-z0-9_-]+\.md)(?:\]\([^)]*\))?\)? ?§ ?(\d+(?:\.\d+)*)")
# Section numbers a page defines: ``## 3. Windows``, ``### 11.1 Limits``, ``**3.1 Calendar.**``.
_SECTION = re.compile(r"^(?:#+ |\*\*)(\d+(?:\.\d+)*)[. ]", re.MULTILINE)
# Names that are not references to a file of this repository, with the reason.
NOT_REFERENCES = {
    ("tests/test_driver_folders.py", "notes.md"),  # a file the test creates in a tmp folder
}


def tracked_files(root: Path) -> list[Path]:
    """The repository's ``*.py``, ``*.md`` and ``*.toml`` files (git's list when there is one)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"],
            check=True, capture_output=True, text=True,
        ).stdout.split("\0")
        files = [root / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in root.rglob("*") if not any(
            part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(p for p in files if p.suffix in SUFFIXES and p.is_file())


def dangling_references(root: Path, files: Iterable[Path]) -> list[str]:
    """``path:line: name`` for every ``.md`` name that resolves to no file in ``root``."""
    files = list(files)
    basenames = {p.name for p in files}
    problems = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for named in _MD_NAME.findall(_URL.sub(" ", line)):
                if (relative, named) in NOT_REFERENCES:
                    continue
                # A pattern such as drivers/<name>/README.md stands for files of that name.
                name = named.rsplit("/", 1)[-1] if "<" in named or ">" in named else named
                candidates = [path.parent / name, root / name.lstrip("/")]
                if any(c.is_file() for c in candidates) or (
                    "/" not in name and name in basenames
                ):
                    continue
                problems.append(f"{relative}:{number}: {name}")
    return problems


def page_sections(page: Path) -> set[str]:
    """The section numbers a page defines, e.g. {"1", "3", "3.1", "11.1"}."""
    return set(_SECTION.findall(page.read_text(encoding="utf-8")))


def unknown_sections(root: Path, files: Iterable[Path]) -> list[str]:
    """``path:line: page §n`` for every citation of a ``docs/`` page section it does not have."""
    docs = root / "docs"
    sections: dict[str, set[str]] = {}
    problems = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for page, section in _CITATION.findall(line):
                target = docs / page
                if not target.is_file():
                    problems.append(f"{relative}:{number}: {page} §{section} (no docs/{page})")
                    continue
                known = sections.setdefault(page, page_sections(target))
                if section not in known:
                    problems.append(f"{relative}:{number}: {page} §{section}")
    return problems


def _checked_files() -> list[Path]:
    # This file names made-up pages on purpose: its own test of the checks below.
    return [p for p in tracked_files(ROOT) if p != Path(__file__).resolve()]


def test_every_md_file_named_exists() -> None:
    problems = dangling_references(ROOT, _checked_files())
    assert problems == [], "names of files that are not in the repository:\n" + "\n".join(
        problems
    )


def test_every_section_cited_exists() -> None:
    problems = unknown_sections(ROOT, _checked_files())
    assert problems == [], "citations of sections that do not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("page", "sections"),
    [
        ("kpis.md", {"1", "2", "3", "3.1", "3.2", "3.3", "3.4", "3.5", "4", "5", "6", "7"}),
        ("protocols.md", {"1", "2", "3", "4"}),
    ],
)
def test_numbered_pages_keep_their_sections(page: str, sections: set[str]) -> None:
    """Code and tests cite these numbers: a page may add sections, never lose one."""
    assert sections <= page_sections(ROOT / "docs" / page)


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## 1. Start\n\n**1.2 Detail.**\n")
    (tmp_path / "README.md").write_text("See [the guide](docs/guide.md) and https://x.org/a.md\n")
    code = tmp_path / "mod.py"
    code.write_text(
        '"""Rules in SPEC.md §2, in docs/guide.md §1.2 and docs/guide.md §3; see README.md."""\n'
    )
    files = [tmp_path / "README.md", tmp_path / "docs" / "guide.md", code]
    assert dangling_references(tmp_path, files) == ["mod.py:1: SPEC.md"]
    assert unknown_sections(tmp_path, files) == [
        "mod.py:1: SPEC.md §2 (no docs/SPEC.md)",
        "mod.py:1: guide.md §3",
    ]
