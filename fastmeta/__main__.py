"""``python -m fastmeta``: the same command line as ``fastmeta``."""
import sys

from .cli import main

sys.exit(main())
