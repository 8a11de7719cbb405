"""`python -m thermoflow` is the `thermoflow` command."""

from thermoflow.cli import main

main()
