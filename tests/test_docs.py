"""The README and docs/: every relative link points to a file that exists, every #anchor to a heading of its target
(GitHub's slugs), each docs page links back to the README and the README links every docs page, and the README
stays a short user's guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 420

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped (code spans keep their text, links their text), lower case,
    every character but letters, digits, underscores, hyphens and spaces removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2, ... for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside code (fenced blocks and inline code spans)."""
    out = []
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        out += [(number, m.group(1)) for m in LINK.finditer(prose)]
    return out


def _external(target: str) -> bool:
    return bool(re.match(r"(?i)(https?:|mailto:)", target))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path):
    problems = []
    for number, target in links(page):
        if _external(target) or not target:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{number}: ({target})"
        if not dest.exists():
            problems.append(f"{where} points to a missing file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)


def test_every_page_has_links_to_check():
    assert DOCS, "docs/ has no Markdown files"
    for page in PAGES:
        assert links(page), f"{page.relative_to(ROOT)} has no links"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_page_opens_with_a_title_and_a_way_back(page: Path):
    lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0].startswith("# "), f"{page.name} does not start with a title"
    assert "(../README.md)" in lines[1], f"{page.name}'s second line does not link back to ../README.md"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README) if not _external(t)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_readme_is_short():
    """The guide stays short; the generated configuration reference (one table row per key) is not counted."""
    text = README.read_text(encoding="utf-8")
    begin, end = text.index("<!-- BEGIN config-reference -->"), text.index("<!-- END config-reference -->")
    n = len((text[:begin] + text[end:]).splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; keep it under {MAX_README_LINES} and move detail to docs/"


def test_slug_follows_github():
    assert slug("`jobs/train.py`: emotion models with Ray Train") == "jobstrainpy-emotion-models-with-ray-train"
    assert slug("GPU path, precision and frame storage") == "gpu-path-precision-and-frame-storage"
    assert slug("Does saliency pick the layer?") == "does-saliency-pick-the-layer"
    assert slug("The model actor's step, on CPU and GPU") == "the-model-actors-step-on-cpu-and-gpu"
    assert slug("Set-up: two commands") == "set-up-two-commands"
    assert slug("save_config and [the docs](x.md)") == "save_config-and-the-docs"
