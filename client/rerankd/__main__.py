"""``python -m rerankd``: the same command line as the ``rerankd`` console script."""

from __future__ import annotations

import sys

from rerankd.cli import main

if __name__ == "__main__":
    sys.exit(main())
