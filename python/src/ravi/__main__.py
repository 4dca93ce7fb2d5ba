"""`python -m ravi` runs the `ravi` command line."""

from ravi._cli import main

main()
