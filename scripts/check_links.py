#!/usr/bin/env python3
"""Check that every relative link in the repository's markdown files resolves.

For README.md, docs/*.md and every other *.md under the repository root (except build output,
virtualenvs, fetched assets and the like), find each markdown link `[text](path)`,
`[text](path#anchor)`, `[text](#anchor)` and each reference definition `[ref]: path`, outside
fenced code blocks, inline code and HTML comments. Links with a scheme (http:, https:, mailto:,
...) are skipped. A link fails if its target file does not exist, or if its anchor is not a
heading of the target markdown file under GitHub's slug rules (lowercase; punctuation removed
except hyphens, underscores and spaces; spaces to hyphens; a repeated heading gets -1, -2, ...).

Usage, from anywhere (the root is found from this file's path):

    python3 scripts/check_links.py

Exit status 0 and "links: N checked, all resolve" when every link resolves; 1 and one
`file:line: link: reason` line per broken link otherwise. Standard library only.
"""

import os
import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent

# Directories never searched for markdown files: build output, virtualenvs, dependencies and
# git-ignored generated or fetched folders.
EXCLUDED_DIRS = {".git", "target", "node_modules", "assets", "__pycache__", ".schemathesis"}
EXCLUDED_PATHS = {Path("load-tests/target"), Path("load-tests/reports")}

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
HTML_ANCHOR = re.compile(r"""<[a-zA-Z][^>]*?\s(?:id|name)\s*=\s*["']([^"']+)["']""")
# [text](target "title"), with one level of nested brackets in the text; images too.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]\\]|\\.|\[[^\[\]]*\])*\]"
    r"\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


def markdown_files():
    """README.md, docs/*.md and every other *.md under the root, outside excluded folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in EXCLUDED_DIRS
            and not d.startswith(".venv")
            and (rel_dir / d) not in EXCLUDED_PATHS
        )
        for name in sorted(filenames):
            if name.lower().endswith(".md"):
                found.append(Path(dirpath) / name)
    return found


def blank_comments(text):
    """Replace HTML comments by spaces, keeping newlines so line numbers stay right."""
    return re.sub(r"<!--.*?-->", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.DOTALL)


def prose_lines(text):
    """(line number, line) for each line outside fenced code blocks, comments blanked."""
    fence = None
    for number, line in enumerate(blank_comments(text).split("\n"), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            if not line.strip()[len(match.group(1)):].strip():
                fence = None


def heading_text_to_plain(text):
    """The text GitHub renders for a heading's inline markdown."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    return text


def slug(text):
    """GitHub's heading anchor: lowercase, punctuation removed (but - and _), spaces to -."""
    text = heading_text_to_plain(text).strip().lower()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in "-_ " or category[0] in "LMN":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors_of(path, cache={}):
    """Every anchor a markdown file defines: its headings' slugs and explicit HTML ids."""
    if path in cache:
        return cache[path]
    text = path.read_text(encoding="utf-8")
    anchors = set()
    counts = {}

    def add_heading(heading):
        base = slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")

    previous = None
    for _, line in prose_lines(text):
        atx = ATX_HEADING.match(line)
        if atx:
            add_heading(atx.group(2) or "")
            previous = None
            continue
        if previous is not None and SETEXT_UNDERLINE.match(line) and previous.strip():
            if not (line.strip().startswith("-") and previous.lstrip().startswith(("-", "*", "|"))):
                add_heading(previous.strip())
                previous = None
                continue
        anchors.update(HTML_ANCHOR.findall(line))
        previous = line
    cache[path] = anchors
    return anchors


def links_of(text):
    """(line number, target) for every link outside code blocks, code spans and comments."""
    for number, line in prose_lines(text):
        without_code = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        definition = REFERENCE_DEF.match(without_code)
        if definition:
            yield number, definition.group(1)
            continue
        for match in INLINE_LINK.finditer(without_code):
            yield number, match.group(1)


def check(path, target):
    """None if the link resolves, else the reason it does not."""
    target = target.strip()
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1].strip()
    if not target:
        return "empty link"
    if SCHEME.match(target):
        return None
    file_part, _, anchor = target.partition("#")
    file_part = unquote(file_part.split("?", 1)[0])
    if file_part:
        base = ROOT if file_part.startswith("/") else path.parent
        resolved = (base / file_part.lstrip("/")).resolve()
        if not resolved.exists():
            return f"no such file: {os.path.relpath(resolved, ROOT)}"
    else:
        resolved = path
    if not anchor:
        return None
    if resolved.is_dir() or resolved.suffix.lower() != ".md":
        return None  # anchors into source files (#L10) and folders are not headings
    anchor = unquote(anchor)
    if anchor not in anchors_of(resolved):
        return f"no heading #{anchor} in {os.path.relpath(resolved, ROOT)}"
    return None


def main():
    checked = 0
    failures = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        for number, target in links_of(text):
            target_stripped = target.strip().strip("<>")
            if SCHEME.match(target_stripped):
                continue
            checked += 1
            reason = check(path, target)
            if reason:
                failures.append(f"{path.relative_to(ROOT)}:{number}: {target}: {reason}")
    if failures:
        print("\n".join(failures))
        print(f"links: {checked} checked, {len(failures)} broken", file=sys.stderr)
        return 1
    print(f"links: {checked} checked, all resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
