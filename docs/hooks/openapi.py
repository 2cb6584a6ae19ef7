"""MkDocs hook: the API reference page, generated from the portal's OpenAPI schema at build time.

``manage.py spectacular`` (drf-spectacular) writes the schema the portal serves at
``/api/schema/``; this hook runs it in a child process (the docs build never imports Django
itself) and turns it into ``api.md``: every operation with its parameters, request body and
responses, then every schema with its fields. So the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.structure.files import File

PAGE = "api.md"
METHODS = ("get", "post", "put", "patch", "delete")


def load_schema(repo_root: Path) -> dict:
    """Run ``manage.py spectacular`` for the portal in ``repo_root`` and return the schema."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "schema.json"
        # A settings-free run: DEBUG only lets Django start without a secret key; nothing is served.
        env = {**os.environ, "DJANGO_DEBUG": "1"}
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        subprocess.run(
            [sys.executable, "manage.py", "spectacular", "--format", "openapi-json", "--file", str(out)],
            cwd=repo_root,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.read_text(encoding="utf-8"))


def _cell(text: object) -> str:
    """One Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(schema: dict) -> str:
    """A short human name of a schema's type: ``string``, ``array of Node``, ``Node``..."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("allOf", "oneOf", "anyOf"):
        if key in schema:
            joined = " or ".join(_type(s) for s in schema[key])
            return joined if key != "allOf" else " and ".join(_type(s) for s in schema[key])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        return "array of " + _type(schema.get("items", {}))
    if "format" in schema:
        kind += f" ({schema['format']})"
    if "enum" in schema:
        kind += ": " + ", ".join(f"`{v}`" for v in schema["enum"] if v is not None)
    if schema.get("nullable"):
        kind += ", nullable"
    return kind


def _anchor(name: str) -> str:
    return "schema-" + name.lower()


def _fields(spec: dict) -> list[str]:
    """A table of an object schema's fields, or nothing for a schema without properties."""
    props = spec.get("properties", {})
    if not props:
        return []
    required = set(spec.get("required", []))
    lines = ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for field, fspec in props.items():
        flags = " (read-only)" if fspec.get("readOnly") else ""
        lines.append(
            f"| `{field}` | {_cell(_type(fspec))}{flags} | {'yes' if field in required else 'no'} | "
            f"{_cell(fspec.get('description', ''))} |"
        )
    return [*lines, ""]


def _body_schema(body: dict) -> dict:
    for spec in (body.get("content") or {}).values():
        return spec.get("schema", {})
    return {}


def _content_type(body: dict) -> str:
    """The schema of a request or response body, by its first media type."""
    content = body.get("content") or {}
    for media, spec in content.items():
        return f"{_type(spec.get('schema', {}))} (`{media}`)"
    return "-"


def render(schema: dict) -> str:
    """The Markdown of the API reference page for an OpenAPI 3 ``schema``."""
    info = schema.get("info", {})
    lines = [
        "# API reference",
        "",
        f"{info.get('title', 'API')}, version {info.get('version', '?')}. {info.get('description', '')}".strip(),
        "",
        "Generated when the site is built from the OpenAPI schema (`manage.py spectacular`); a running",
        "portal serves the same schema at `/api/schema/` and an interactive view at `/api/docs/`.",
        "Authentication, limits and error codes per endpoint: [the portal](portal.md#api).",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                op = item[method]
                tag = (op.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((path, method, op))
    for tag in sorted(by_tag):
        lines += [f"## {tag}", ""]
        for path, method, op in by_tag[tag]:
            lines += [f"### `{method.upper()} {path}`", ""]
            for text in (op.get("summary"), op.get("description")):
                if text:
                    lines += [text.strip(), ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | type | required | description |", "| --- | --- | --- | --- | --- |"]
                for p in params:
                    lines.append(
                        f"| `{p['name']}` | {p.get('in', '')} | {_cell(_type(p.get('schema', {})))} | "
                        f"{'yes' if p.get('required') else 'no'} | {_cell(p.get('description', ''))} |"
                    )
                lines.append("")
            if "requestBody" in op:
                lines += [f"Request body: {_content_type(op['requestBody'])}", ""]
                lines += _fields(_body_schema(op["requestBody"]))
            responses = op.get("responses", {})
            if responses:
                lines += ["| response | body | description |", "| --- | --- | --- |"]
                for code, resp in responses.items():
                    lines.append(f"| {code} | {_cell(_content_type(resp))} | {_cell(resp.get('description', ''))} |")
                lines.append("")
    schemas = schema.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["## Schemas", ""]
    for name in sorted(schemas):
        spec = schemas[name]
        lines += [f"### {name} {{ #{_anchor(name)} }}", ""]
        if spec.get("description"):
            lines += [spec["description"].strip(), ""]
        table = _fields(spec)
        if table:
            lines += table
        else:
            lines += [f"Type: {_type(spec)}", ""]
    return "\n".join(lines) + "\n"


def on_files(files, config):
    """Add the generated ``api.md`` to the site's files."""
    repo_root = Path(config["docs_dir"]).parent
    files.append(File.generated(config, PAGE, content=render(load_schema(repo_root))))
    return files
