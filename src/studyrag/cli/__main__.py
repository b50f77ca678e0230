"""`python -m studyrag.cli` runs the command line."""

from studyrag.cli import main

main()
