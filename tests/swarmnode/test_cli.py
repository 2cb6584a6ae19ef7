"""The ``swarmnode`` command's surface: a version, and help text on every flag of every sub-command."""

from __future__ import annotations

import argparse
import subprocess
import sys

from swarmnode.cli import build_parser
from swarmnode.version import __version__


def _options(parser: argparse.ArgumentParser, name: str = "swarmnode"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        else:
            yield name, action


def test_every_flag_and_argument_has_help():
    missing = [f"{cmd} {'/'.join(a.option_strings) or a.dest}" for cmd, a in _options(build_parser()) if not a.help]
    assert missing == []


def test_it_prints_its_version_without_loading_torch():
    code = "import sys\nfrom swarmnode.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["swarmnode", __version__, "False"]


def test_bench_refuses_push_through_a_relay_before_starting_anything():
    from swarmnode.cli import main

    try:
        main(["bench", "--push", "--relay"])
    except SystemExit as exc:
        assert "--push applies to the plain swarm bench and --sessions" in str(exc.code)
    else:
        raise AssertionError("bench --push --relay ran")
