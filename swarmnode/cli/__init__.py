"""The ``swarmnode`` command: serve | relay | generate | embed | bench | models | demo | doctor | identity | seed.

Each command imports what it runs inside its function: the server, the client, the models and the
benchmarks load torch (~10 s), and ``swarmnode --help`` or ``swarmnode identity`` must not wait for it.
Each module here adds its commands to the parser (``add_commands``); a new command group is a module of its own.
"""

from __future__ import annotations

import argparse
import sys

from swarmnode.cli import bench, dht, embed, generate, models, serve
from swarmnode.version import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``swarmnode`` command."""
    parser = argparse.ArgumentParser(prog="swarmnode", description="Layerswarm node agent and client")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (serve, generate, embed, bench, models, dht):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the ``swarmnode`` command."""
    from swarmnode.config_file import apply_to_serve

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        apply_to_serve(parser, argv)  # --config, SWARMNODE_* and the default config file become serve's defaults
    except ValueError as exc:
        parser.exit(2, f"swarmnode serve: error: {exc}\n")
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"swarmnode: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
