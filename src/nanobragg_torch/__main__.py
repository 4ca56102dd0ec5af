"""``python -m nanobragg_torch``: the nanoBragg command line."""
import sys

from .cli.main import main

sys.exit(main())
