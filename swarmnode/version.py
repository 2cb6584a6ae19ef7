"""The package's version (kept in step with ``pyproject.toml``), importable without the client."""

__version__ = "0.1.0"
