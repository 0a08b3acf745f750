"""``python -m tvmsplit``: the command line (same as the ``tvmsplit`` script)."""
from .cli import main

main()
