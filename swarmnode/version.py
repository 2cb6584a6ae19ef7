"""The package's version (``pyproject.toml`` reads it from here), importable without the client."""

__version__ = "0.1.0"
