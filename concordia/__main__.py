"""`python -m concordia`: the CLI."""

from concordia.cli import main

main()
