"""``python -m bench run --scenario NAME --model NAME``."""

import sys

from bench.run import main

sys.exit(main())
