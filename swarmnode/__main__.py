"""``python -m swarmnode`` == the ``swarmnode`` command."""

from swarmnode.cli import main

main()
