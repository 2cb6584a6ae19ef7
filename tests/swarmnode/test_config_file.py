"""``swarmnode serve``'s settings: command line > SWARMNODE_* environment > config file > default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from swarmnode import config_file
from swarmnode.cli import build_parser
from swarmnode.config_file import ConfigError, apply_settings, subparser


def serve_args(argv: list[str], environ: dict[str, str], config: str | None = None):
    """What ``swarmnode serve ARGV`` would parse, with ``environ`` as the environment."""
    parser = build_parser()
    apply_settings(subparser(parser, "serve"), config, environ)
    return parser.parse_args(["serve", *argv])


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    """The default config file of the machine running the tests never leaks in."""
    monkeypatch.setattr(config_file, "default_config_path", lambda: tmp_path / "absent" / "node.toml")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return str(path)


def test_it_takes_every_flag_from_the_file_with_dashes_or_underscores(tmp_path):
    path = write(
        tmp_path,
        'blocks = "auto"\nportal = "http://portal.example"\ntoken = "lsn_file"\ncache-tokens = 4096\n'
        'batch_window_ms = 12.5\nno-measure = true\nrelays = ["ws://a/r", "ws://b/r"]\nrelay = "always"\n',
    )
    args = serve_args([], {}, path)
    assert (args.blocks, args.portal, args.token) == ("auto", "http://portal.example", "lsn_file")
    assert (args.cache_tokens, args.batch_window_ms, args.no_measure) == (4096, 12.5, True)
    assert (args.relays, args.relay) == ("ws://a/r,ws://b/r", "always")


def test_command_line_beats_environment_beats_file_beats_default(tmp_path):
    path = write(tmp_path, 'blocks = "0:10"\nportal = "http://file"\ncache-tokens = 100\nidle-timeout = 7\n')
    env = {"SWARMNODE_PORTAL": "http://env", "SWARMNODE_CACHE_TOKENS": "200"}
    args = serve_args(["--cache-tokens", "300"], env, path)
    assert args.cache_tokens == 300  # command line
    assert args.portal == "http://env"  # environment over the file
    assert args.blocks == "0:10" and args.idle_timeout == 7.0  # file
    assert args.max_batch == 16  # default


def test_the_token_never_needs_the_command_line(tmp_path):
    assert serve_args([], {"SWARMNODE_TOKEN": "lsn_env"}).token == "lsn_env"
    assert serve_args([], {"LAYERSWARM_NODE_TOKEN": "lsn_old"}).token == "lsn_old"  # still works
    both = {"LAYERSWARM_NODE_TOKEN": "lsn_old", "SWARMNODE_TOKEN": "lsn_new"}
    assert serve_args([], both).token == "lsn_new"
    assert serve_args([], {"LAYERSWARM_NODE_TOKEN": "lsn_old"}, write(tmp_path, 'token = "lsn_f"')).token == "lsn_old"


def test_booleans_from_the_environment(tmp_path):
    assert serve_args([], {"SWARMNODE_NO_MEASURE": "yes"}).no_measure is True
    assert serve_args([], {"SWARMNODE_NO_MEASURE": "0"}).no_measure is False
    with pytest.raises(ConfigError, match="SWARMNODE_NO_MEASURE: expected true or false"):
        serve_args([], {"SWARMNODE_NO_MEASURE": "maybe"})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("cache_tokns = 5\n", "unknown key 'cache_tokns' (did you mean 'cache-tokens'?)"),
        ("frobnicate = 1\n", "unknown key 'frobnicate'"),
        ('cache-tokens = "many"\n', "cache-tokens: expected an int, got 'many'"),
        ('relay = "sometimes"\n', "relay: 'sometimes' is not one of auto, always, never"),
        ('no-measure = "perhaps"\n', "no-measure: expected true or false"),
        ("corrupt-fraction = 1.0\n", "unknown key 'corrupt-fraction'"),  # test-only flags stay hidden
        ("blocks = [\n", "node.toml"),  # broken TOML names the file
    ],
)
def test_a_bad_file_is_a_clear_error(tmp_path, text, error):
    with pytest.raises(ConfigError) as exc:
        serve_args([], {}, write(tmp_path, text))
    assert error in str(exc.value)


def test_a_bad_environment_value_is_a_clear_error():
    with pytest.raises(ConfigError, match="SWARMNODE_PORT: expected an int, got 'eighty'"):
        serve_args([], {"SWARMNODE_PORT": "eighty"})


def test_an_unknown_environment_name_is_a_warning_not_an_error(capsys):
    args = serve_args([], {"SWARMNODE_TOKNE": "lsn_x", "SWARMNODE_VENV": "/opt/venv"})
    assert args.token is None
    err = capsys.readouterr().err
    assert "SWARMNODE_TOKNE is no flag, ignored (did you mean 'SWARMNODE_TOKEN'?)" in err
    assert "SWARMNODE_VENV" not in err  # the install script's own variable


def test_the_default_config_file_is_read_when_present(tmp_path, monkeypatch):
    default = tmp_path / "conf" / "node.toml"
    default.parent.mkdir()
    default.write_text('portal = "http://default"\n')
    monkeypatch.setattr(config_file, "default_config_path", lambda: default)
    assert serve_args([], {}).portal == "http://default"
    assert serve_args([], {}, write(tmp_path, 'portal = "http://given"')).portal == "http://given"
    assert serve_args([], {"SWARMNODE_CONFIG": write(tmp_path, 'portal = "http://envfile"')}).portal == "http://envfile"


def test_a_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        serve_args([], {}, str(tmp_path / "nope.toml"))


def test_the_command_reports_a_bad_file_without_a_traceback(tmp_path):
    path = write(tmp_path, "cache_tokns = 5\n")
    out = subprocess.run(
        [sys.executable, "-m", "swarmnode", "serve", "--config", path], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "unknown key 'cache_tokns' (did you mean 'cache-tokens'?)" in out.stderr
    assert "Traceback" not in out.stderr
