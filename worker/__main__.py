"""``python -m worker MODULE:APP [MODULE:APP ...]``."""

from __future__ import annotations

import sys

from worker.cli import main

sys.exit(main())
