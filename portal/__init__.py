"""Layerswarm portal: the swarm's home (accounts, tracker, reputation, ledger, chat, API)."""
