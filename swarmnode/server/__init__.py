"""The node process: websocket server, session lifecycle, readiness line."""

from swarmnode.server.config import NodeConfig, parse_blocks
from swarmnode.server.node import Node, run_node

__all__ = ["Node", "NodeConfig", "parse_blocks", "run_node"]
