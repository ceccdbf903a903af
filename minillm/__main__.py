"""``python -m minillm ...`` runs the command line (see minillm/cli.py)."""
import sys

from .cli import main

sys.exit(main())
