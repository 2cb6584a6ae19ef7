"""The documentation: the README as a landing page, and the MkDocs site built strictly (issue #22).

``make test`` builds the site here rather than in a Makefile line of its own: one command runs
everything, a broken link fails like any test, and the built pages can be checked (nothing loaded
from the internet, the API reference matching the code's schema, the protocol spec included whole).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTARTS = ("Chat", "Contribute a GPU or CPU", "Contribute a browser tab", "Call the API", "Run a portal")


def _sections(markdown: str, level: str) -> dict[str, list[str]]:
    """The lines under each heading of ``level`` (e.g. ``"###"``), code blocks included, by heading text."""
    sections: dict[str, list[str]] = {}
    current, in_code = None, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"#{1,6} ", line):
            current = line[len(level) + 1 :].strip() if line.startswith(level + " ") else None
            if current is not None:
                sections[current] = []
            continue
        if current is not None:
            sections[current].append(line)
    return sections


def test_it_keeps_the_readme_a_landing_page_with_a_short_quickstart_per_user_group():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    two_commands = "\n".join(_sections(text, "##")["The two commands"])
    assert "make demo" in two_commands and "make test" in two_commands
    quickstarts = _sections(text, "###")
    for name in QUICKSTARTS:
        lines = [line for line in quickstarts[name] if line.strip()]
        assert 0 < len(lines) <= 15, (name, len(lines))


def test_every_relative_link_of_the_readme_names_a_file_of_the_repository():
    text = README.read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]
    assert targets, "the README links its docs"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built from this tree with ``mkdocs build --strict`` (any warning fails it)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


class _Resources(HTMLParser):
    """Every address a page makes the browser load by itself (scripts, styles, fonts, images, frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "audio", "video", "source", "embed") and a.get("src"):
            self.loads.append(a["src"])
        if tag == "link" and a.get("href") and a.get("rel") not in ("canonical", "alternate", "author"):
            self.loads.append(a["href"])


def test_it_builds_the_site_strictly_and_the_pages_load_nothing_from_the_internet(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 10
    for page in pages:
        html = page.read_text(encoding="utf-8")
        parser = _Resources()
        parser.feed(html)
        external = [url for url in parser.loads if re.match(r"([a-z]+:)?//", url, re.IGNORECASE)]
        assert not external, (page.relative_to(site), external)
    for style in site.rglob("*.css"):
        assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", style.read_text(encoding="utf-8")), style


def test_the_api_reference_documents_every_operation_of_the_portals_schema(site):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "/v1/chat/completions" in schema["paths"]
    for path, item in schema["paths"].items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item:
                assert f"{method.upper()} {path}" in page, (method, path)


def test_the_protocol_page_is_the_spec_in_swarmnode_itself(site):
    spec = (ROOT / "swarmnode" / "protocol" / "README.md").read_text(encoding="utf-8")
    page = (site / "protocol" / "index.html").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,3} (.+)$", spec, re.MULTILINE)
    assert len(headings) >= 10
    for heading in headings:
        words = re.sub(r"[`*]", "", heading).split()
        assert words[-1].replace("&", "&amp;") in page, heading


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_included_files_keep_working_links_on_the_site():
    includes = _hook("includes")
    text = (
        "See [the spec](../swarmnode/protocol/README.md#9-relays), [a page](../docs/security.md), "
        "[code](../swarmnode/client/routing.py), [web](https://example.org/x.md), [here](#local).\n"
        "```sh\n[not a link](../swarmnode/cli.py)\n```\n"
    )
    out = includes.rewrite_links(text, "portal/README.md", "", ROOT, "https://git.example/ls")
    assert "[the spec](protocol.md#9-relays)" in out
    assert "[a page](security.md)" in out
    assert "[code](https://git.example/ls/blob/main/swarmnode/client/routing.py)" in out
    assert "[web](https://example.org/x.md)" in out and "[here](#local)" in out
    assert "[not a link](../swarmnode/cli.py)" in out  # code blocks are left alone
    page = includes.expand('--8<-- "deploy/README.md"\n', "", ROOT, None)
    assert page.startswith((ROOT / "deploy" / "README.md").read_text(encoding="utf-8").splitlines()[0])


def test_the_api_page_renders_refs_inline_bodies_and_alternatives():
    openapi = _hook("openapi")
    schema = {
        "info": {"title": "T", "version": "1"},
        "paths": {
            "/v1/x/{id}": {
                "post": {
                    "tags": ["x"],
                    "summary": "Make an x",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["stop"],
                                    "properties": {"stop": {"oneOf": [{"type": "string"}, {"type": "array"}]}},
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": {
                            "description": "ok | fine",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/X"}}},
                        }
                    },
                }
            }
        },
        "components": {
            "schemas": {"X": {"type": "object", "properties": {"id": {"type": "integer", "readOnly": True}}}}
        },
    }
    page = openapi.render(schema)
    assert "### `POST /v1/x/{id}`" in page and "Make an x" in page
    assert "| `id` | path | integer | yes |" in page
    assert "| `stop` | string or array of object | yes |" in page
    assert "[X](#schema-x)" in page and "ok \\| fine" in page
    assert "### X { #schema-x }" in page and "| `id` | integer (read-only) | no |" in page
