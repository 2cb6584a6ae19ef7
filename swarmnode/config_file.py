"""``swarmnode serve``'s settings from a TOML file and ``SWARMNODE_*`` environment variables.

Every flag of ``swarmnode serve`` can be set three more ways; the first that gives a value wins:

1. the command line (``--cache-tokens 4096``);
2. the environment: ``SWARMNODE_`` and the flag's name in capitals, dashes as underscores
   (``SWARMNODE_CACHE_TOKENS=4096``, ``SWARMNODE_TOKEN=lsn_...``); ``$LAYERSWARM_NODE_TOKEN`` still
   counts as ``SWARMNODE_TOKEN``;
3. the file given by ``--config`` (or ``$SWARMNODE_CONFIG``), else ``node.toml`` in the user config
   directory (``~/.config/layerswarm/node.toml`` on Linux) when it exists. Keys are the long flag names,
   with dashes or underscores::

       model = "smollm2"
       blocks = "auto"
       portal = "https://layerswarm.example"
       token = "lsn_..."
       cache-tokens = 8192
       relays = ["wss://relay.example/layerswarm/v1/relay"]   # a list or "a,b"

and then the flag's default. So the node token never has to be on a command line, where ``ps`` shows
it to every user of the machine. An unknown key, a value of the wrong type or outside a flag's choices
is an error naming the file (or variable) and the key.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

ENV_PREFIX = "SWARMNODE_"
CONFIG_ENV = "SWARMNODE_CONFIG"  # the file's path, as --config
LEGACY_TOKEN_ENV = "LAYERSWARM_NODE_TOKEN"  # the node token's variable before config files existed
_NOT_SETTINGS = {"help", "config", "func", "command"}
_NOT_FLAGS = {CONFIG_ENV, "SWARMNODE_VENV", "SWARMNODE_PIP_SOURCE"}  # deploy/install-node.sh's own variables
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A config file or ``SWARMNODE_*`` variable that cannot be used (the message says where and why)."""


def default_config_path() -> Path:
    """``node.toml`` in the user config directory (``~/.config/layerswarm`` on Linux, ``%APPDATA%`` on Windows)."""
    return platformdirs.user_config_path("layerswarm", appauthor=False) / "node.toml"


def settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options of ``parser`` a file or the environment may set, by destination name."""
    return {
        a.dest: a
        for a in parser._actions  # argparse keeps no public list of a parser's options
        if a.option_strings and a.dest not in _NOT_SETTINGS and a.help != argparse.SUPPRESS
    }


def config_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: ``--config``, else ``$SWARMNODE_CONFIG``, else the default one if it exists.

    Raises:
        ConfigError: an explicitly named file does not exist.
    """
    named = explicit or environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.exists() or path.is_dir():  # /dev/null is fine: no settings
            raise ConfigError(f"config file {path} does not exist")
        return path
    path = default_config_path()
    return path if path.is_file() else None


def file_settings(path: Path, options: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The options ``path`` sets, converted and checked like command-line values.

    Raises:
        ConfigError: unreadable TOML, an unknown key, a value of the wrong type or not among the choices.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    out = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in options:
            raise ConfigError(f"{path}: unknown key {key!r}{_suggestion(dest, options)}")
        out[dest] = _convert(options[dest], value, f"{path}: {key}")
    return out


def env_settings(environ: Mapping[str, str], options: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The options ``SWARMNODE_*`` variables set (``$LAYERSWARM_NODE_TOKEN`` as the token's fallback).

    A ``SWARMNODE_*`` name that is no flag gets a warning on stderr, not an error: scripts (the node
    install script's ``SWARMNODE_VENV``) use the prefix for their own settings.

    Raises:
        ConfigError: a bad value.
    """
    out = {}
    if environ.get(LEGACY_TOKEN_ENV) and "token" in options:
        out["token"] = environ[LEGACY_TOKEN_ENV]
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_FLAGS:
            continue
        dest = name[len(ENV_PREFIX) :].lower()
        if dest not in options:
            print(
                f"swarmnode: warning: {name} is no flag, ignored{_suggestion(dest, options, env=True)}", file=sys.stderr
            )
            continue
        out[dest] = _convert(options[dest], value, name)
    return out


def apply_settings(
    parser: argparse.ArgumentParser, explicit: str | None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """Make the file's and the environment's values ``parser``'s defaults (the command line still wins).

    Args:
        parser: the ``serve`` sub-parser.
        explicit: ``--config`` as given on the command line, or ``None``.
        environ: the environment (default ``os.environ``).

    Returns:
        The file read, or ``None``.

    Raises:
        ConfigError: see :func:`file_settings` and :func:`env_settings`.
    """
    environ = os.environ if environ is None else environ
    options = settable(parser)
    path = config_path(explicit, environ)
    values = file_settings(path, options) if path else {}
    values.update(env_settings(environ, options))
    parser.set_defaults(**values)
    return path


def apply_to_serve(parser: argparse.ArgumentParser, argv: list[str]) -> Path | None:
    """For ``swarmnode serve ...``: :func:`apply_settings` to the ``serve`` sub-parser (its ``--config``).

    Args:
        parser: the ``swarmnode`` parser.
        argv: the command line, without the program name.

    Returns:
        The file read, or ``None`` (also for other commands, which are left alone).
    """
    if argv[:1] != ["serve"]:
        return None
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    return apply_settings(subparser(parser, "serve"), pre.parse_known_args(argv[1:])[0].config)


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The sub-command parser ``name`` of ``parser``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` from a file or variable as the command line would have given it to ``action``."""
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(value, list) and action.type is None:  # relays = ["a", "b"]: the flag takes "a,b"
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool | dict | list):
        raise ConfigError(f"{where}: expected a value like --{action.dest.replace('_', '-')} takes, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "value")
            raise ConfigError(f"{where}: expected {'an' if kind == 'int' else 'a'} {kind}, got {value!r}") from None
    elif not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _suggestion(dest: str, options: Mapping[str, argparse.Action], env: bool = False) -> str:
    close = difflib.get_close_matches(dest, list(options), n=1)
    if not close:
        return " (see swarmnode serve --help)"
    return f" (did you mean {ENV_PREFIX + close[0].upper() if env else close[0].replace('_', '-')!r}?)"
