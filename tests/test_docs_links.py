"""Every relative link of the documentation resolves: the file exists, and a ``#anchor`` is the GitHub slug of a
heading in it (so moving a section between README.md and docs/ cannot leave a dead link behind)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    {REPO / "README.md", REPO / "model" / "training" / "TRAINING.md"}
    | set((REPO / "docs").glob("*.md"))
    | set((REPO / "weights").glob("*.md"))
    | set((REPO / "benchmarks").glob("*.md"))
)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading keeps its text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(path: Path) -> list[str]:
    return [m.group(1) for line in _prose(path.read_text()) for m in LINK.finditer(re.sub(r"`[^`]*`", "", line))]


def test_the_slugs_are_githubs():
    assert github_slug("Checkpoints and `adaptiveclick weights`") == "checkpoints-and-adaptiveclick-weights"
    assert github_slug("Several workers and replicas behind one URL (Redis)") == (
        "several-workers-and-replicas-behind-one-url-redis"
    )
    assert github_slug("The second starter run (`starter2`, finished: `s7600+s8000`)") == (
        "the-second-starter-run-starter2-finished-s7600s8000"
    )


def test_headings_in_code_blocks_and_links_in_code_are_not_counted(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n```bash\n# resume\n[x](gone.md)\n```\n\n## Title\n\n`[y](gone.md)` [z](#title-1)\n")
    assert anchors(page) == {"title", "title-1"} and links(page) == ["#title-1"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    dead = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check offline
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            dead.append(f"{target}: no such file")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            dead.append(f"{target}: no heading with that anchor")
    assert not dead, f"{page.relative_to(REPO)}: {dead}"


def test_the_documentation_is_linked_from_the_readme():
    """A page nobody links to is a page nobody finds: every docs/*.md is reachable from README.md."""
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links(REPO / "README.md")}
    orphans = [p.name for p in (REPO / "docs").glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"docs/ pages the README does not link: {orphans}"
