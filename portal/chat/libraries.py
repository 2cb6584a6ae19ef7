"""The chat page's third-party browser libraries, installed from npm (``frontend/package-lock.json``) and
served by the portal itself (no CDN): a CommonMark renderer, an HTML sanitizer, a syntax highlighter with
a high-contrast theme, and axe-core (the accessibility checker the browser tests inject).

Only the files listed here are reachable; nothing else under ``node_modules`` is.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

NODE_MODULES = Path(settings.BASE_DIR) / "frontend" / "node_modules"

# name in the URL -> (file under node_modules, content type)
LIBRARIES: dict[str, tuple[str, str]] = {
    "marked.js": ("marked/lib/marked.esm.js", "text/javascript"),
    "purify.js": ("dompurify/dist/purify.es.mjs", "text/javascript"),
    "highlight.js": ("@highlightjs/cdn-assets/es/highlight.min.js", "text/javascript"),
    "highlight.css": ("@highlightjs/cdn-assets/styles/a11y-dark.min.css", "text/css"),
    "axe.js": ("axe-core/axe.min.js", "text/javascript"),
}


def library_file(name: str) -> tuple[Path, str] | None:
    """The path and content type of an allowed library file, or ``None`` (unknown name, not installed)."""
    entry = LIBRARIES.get(name)
    if entry is None:
        return None
    path = NODE_MODULES / entry[0]
    return (path, entry[1]) if path.is_file() else None
