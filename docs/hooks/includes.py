"""MkDocs hook: include repository files in pages and keep every link working on the site.

A line ``--8<-- "path/from/repo/root.md"`` is replaced by that file's text, so the protocol spec,
the portal notes and the deployment guide are written once, next to their code, and shown on the
site as they are. Links are rewritten for the site: a link to a file the site has as a page (a
``docs/`` page, or one of the included READMEs) goes to that page; a link to any other file of
the repository goes to it on the repository's web host (``extra.source_url`` in mkdocs.yml), since the site does not
carry source files.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

INCLUDE = re.compile(r'^--8<-- "(?P<path>[^"]+)"\s*$', re.MULTILINE)
# [text](target) and [text](target "title"); images too. Not inside code spans (good enough for our pages).
LINK = re.compile(r"(?P<head>!?\[[^\]\n]*\]\()(?P<target>[^)\s]+)(?P<tail>(?:\s+\"[^\"]*\")?\))")
FENCE = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)

# Repository files that the site shows as pages of its own.
PAGES = {
    "README.md": "index.md",
    "swarmnode/protocol/README.md": "protocol.md",
    "portal/README.md": "portal.md",
    "deploy/README.md": "deploy.md",
}


def _site_target(repo_path: str, anchor: str, page_dir: str, repo_root: Path, source_url: str | None) -> str | None:
    """Where a link to ``repo_path`` (normalized, relative to the repository root) points on the site.

    ``page_dir`` is the directory, under ``docs/``, of the page the link is shown on.
    """
    if repo_path in PAGES:
        return posixpath.relpath(PAGES[repo_path], page_dir or ".") + anchor
    if repo_path.startswith("docs/"):
        return posixpath.relpath(repo_path[len("docs/") :], page_dir or ".") + anchor
    if not source_url:
        return None
    kind = "tree" if (repo_root / repo_path).is_dir() else "blob"
    return f"{source_url.rstrip('/')}/{kind}/main/{repo_path}{anchor}"


def rewrite_links(markdown: str, source: str, page_dir: str, repo_root: Path, source_url: str | None) -> str:
    """Rewrite relative links in ``markdown``, written as the repository file ``source``, for the site.

    ``page_dir`` is the directory, under ``docs/``, of the page that shows it.

    Links to web addresses, mail addresses and anchors on the same page are left alone, and so is
    anything inside fenced code blocks.
    """
    base = posixpath.dirname(source)

    def one(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith(("#", "/")):
            return match[0]
        path, hash_, fragment = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(base, path)).removeprefix("./")
        if repo_path.startswith("../"):
            return match[0]
        new = _site_target(repo_path, hash_ + fragment, page_dir, repo_root, source_url)
        return match[0] if new is None else f"{match['head']}{new}{match['tail']}"

    parts = FENCE.split(markdown)
    # FENCE.split keeps the fence markers: text, marker, code, marker, text, ...
    out, in_code = [], False
    for part in parts:
        if part in ("```", "~~~"):
            in_code = not in_code
            out.append(part)
        elif in_code:
            out.append(part)
        else:
            out.append(LINK.sub(one, part))
    return "".join(out)


def expand(markdown: str, page_dir: str, repo_root: Path, source_url: str | None) -> str:
    """Replace each ``--8<-- "path"`` line by the repository file it names, its links rewritten."""

    def one(match: re.Match[str]) -> str:
        path = match["path"]
        text = (repo_root / path).read_text(encoding="utf-8")
        return rewrite_links(text, path, page_dir, repo_root, source_url)

    return INCLUDE.sub(one, markdown)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs hook signature
    """Expand includes, then rewrite the page's own links that leave ``docs/``."""
    repo_root = Path(config["docs_dir"]).parent
    source_url = config["extra"].get("source_url")
    source = "docs/" + page.file.src_uri
    page_dir = posixpath.dirname(page.file.src_uri)
    markdown = rewrite_links(markdown, source, page_dir, repo_root, source_url)
    return expand(markdown, page_dir, repo_root, source_url)
