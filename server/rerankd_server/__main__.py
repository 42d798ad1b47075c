"""``python -m rerankd_server`` runs the sidecar, exactly as ``rerankd serve`` does."""

from __future__ import annotations

import sys

from rerankd_server.app import main

sys.exit(main())
