"""``python -m nanobragg_torch``: the nanoBragg command line (as the ``nanoBragg`` console script)."""
from ._console import nanoBragg

nanoBragg()
