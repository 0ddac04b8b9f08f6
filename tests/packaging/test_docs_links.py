"""The README and docs/ as a reader follows them: every relative link reaches a file, every
``#anchor`` a heading of the file it points into, and the front page stays short with the
two commands a newcomer and CI start from."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAX_README_LINES = 300  # the front page: what it is, a quick start, tables, links

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target), not inside inline code; the target up to a space
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents() -> list[Path]:
    """The front page, docs/, and the other pages they send a reader to."""
    others = [REPO / "CHANGELOG.md", REPO / "tests" / "README.md", *(REPO / "bench").glob("*.md")]
    docs = sorted((REPO / "docs").rglob("*.md"))
    return [README, *docs, *sorted(p for p in others if p.exists())]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    for _, line in prose_lines(path):  # explicit <a id="..."> / <a name="...">
        found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    return [(number, target) for number, line in prose_lines(path)
            for target in _LINK.findall(_INLINE_CODE.sub("", line))]


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """What a reader of ``path`` would find missing, one line per link."""
    problems = []
    for number, target in links(path):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # http(s), mailto: not ours to check offline
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not destination.is_relative_to(root):
            problems.append(f"{where} leaves the repository")
            continue
        if not destination.exists():
            problems.append(f"{where} names no file")
            continue
        if anchor and (destination.suffix != ".md" or unquote(anchor) not in anchors(destination)):
            problems.append(f"{where} names no heading of {destination.relative_to(root)}")
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_readme_stays_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_the_readme_shows_the_demo_and_the_whole_test_suite_commands() -> None:
    # CI runs scripts/test.sh (.ci/run) and a newcomer starts with these two lines
    commands = {line.strip() for _, line in prose_lines(README)}
    assert {"bash scripts/demo.sh", "bash scripts/test.sh"} <= commands


def test_slugs_follow_github() -> None:
    assert slug("Known errors and their fixes") == "known-errors-and-their-fixes"
    assert slug("Metrics (Prometheus)") == "metrics-prometheus"
    assert slug("From SQL: `durable_adapter_emit` (PostgreSQL)") == \
        "from-sql-durable_adapter_emit-postgresql"
    assert slug("A first deployment: docker compose") == "a-first-deployment-docker-compose"


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path: Path) -> None:
    # the checker itself, on a tree of its own: one good link, one link to no file, one to
    # no heading, one to a file outside the tree; a link in a code block is not followed
    (tmp_path / "README.md").write_text("# Front\n\n## Known errors\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Page\n\n[ok](../README.md#known-errors) [self](#page) "
                    "[gone](nowhere.md) [bad](../README.md#no-such-heading) "
                    "[out](../../elsewhere.md) `[code](inline.md)`\n\n"
                    "```\n[code](fenced.md)\n```\n")
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "nowhere.md names no file",
        "../README.md#no-such-heading names no heading of README.md",
        "../../elsewhere.md leaves the repository",
    ]
