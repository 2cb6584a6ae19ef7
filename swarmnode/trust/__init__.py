"""Trust between strangers: node identity keys, the encrypted channel, usage receipts, attestations.

Below both the server and the client (and the portal's public view of a node): nothing here
imports ``server``, ``runtime`` or ``client``.
"""
