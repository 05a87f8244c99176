#!/usr/bin/env python3
"""Checks that every relative link in the repository's Markdown resolves.

README.md became a landing page that points into docs/, and the pages point
at each other and at files (deploy/, certs/, ...): a page renamed or a
heading reworded would leave a link that GitHub renders as a 404 or lands at
the top of a page. This walks every tracked *.md file (README.md, docs/ and
the READMEs of the other folders) and checks each inline link
`[text](target)` outside code blocks and code spans:

- `path` must name a file or folder in the repository (relative to the page);
- `path#anchor` and `#anchor` must also name a heading of that Markdown file,
  by GitHub's anchor rules (lower case, punctuation dropped, spaces to
  hyphens, -1, -2, ... for repeats);
- absolute URLs (http:, https:, mailto:) are not fetched (CI has no network
  to spare for that) and are skipped.

Exit status 0 when every link resolves, 1 with one line per broken link.
Run from anywhere: `python3 deploy/check-links.py`.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# [text](target) or [text](target "title"); text may hold code spans.
LINK = re.compile(r"\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files():
    """The tracked Markdown files (git ls-files), else every *.md on disk."""
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "*.md"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        files = [f for f in out.splitlines() if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d, dirs, names in os.walk(ROOT):
            dirs[:] = [x for x in dirs if x not in (".git", "target")]
            files += [os.path.relpath(os.path.join(d, n), ROOT) for n in names if n.endswith(".md")]
    # Throwaway fuzz and build outputs are not documentation.
    return sorted(f for f in files if not f.startswith(("target/", "fuzz/target/")))


def prose_lines(text):
    """(line number, line) outside fenced code blocks, code spans blanked."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * len(marker.group(1))
            elif stripped.startswith(fence):
                fence = None
            continue
        if fence is None:
            yield number, re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), line)


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path, cache={}):
    """Every anchor of a Markdown file's headings."""
    if path not in cache:
        seen = {}
        found = set()
        with open(path, encoding="utf-8") as f:
            text = f.read()
        fence = None
        for line in text.splitlines():
            stripped = line.lstrip()
            marker = re.match(r"(`{3,}|~{3,})", stripped)
            if marker:
                if fence is None:
                    fence = marker.group(1)[0] * len(marker.group(1))
                elif stripped.startswith(fence):
                    fence = None
                continue
            m = HEADING.match(line) if fence is None else None
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def check(page):
    """The broken links of one page, as messages."""
    broken = []
    full = os.path.join(ROOT, page)
    with open(full, encoding="utf-8") as f:
        text = f.read()
    for number, line in prose_lines(text):
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(full), path)) if path else full
            where = f"{page}:{number}: {target}"
            if not dest.startswith(ROOT + os.sep) and dest != ROOT:
                broken.append(f"{where}: points outside the repository")
            elif not os.path.exists(dest):
                broken.append(f"{where}: no such file")
            elif anchor:
                if not dest.endswith(".md") or os.path.isdir(dest):
                    broken.append(f"{where}: an anchor into a file that is not Markdown")
                elif anchor not in anchors(dest):
                    broken.append(f"{where}: no heading with that anchor in {os.path.relpath(dest, ROOT)}")
    return broken


def main():
    pages = markdown_files()
    broken = [b for page in pages for b in check(page)]
    for b in broken:
        print(f"broken link: {b}")
    links = sum(
        len(LINK.findall(line))
        for page in pages
        for _, line in prose_lines(open(os.path.join(ROOT, page), encoding="utf-8").read())
    )
    print(f"check-links: {len(pages)} pages, {links} links, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
