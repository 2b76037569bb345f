"""`python -m cli`: the `fleet` command without its console script."""

from cli import main

main()
