"""What starts runs and when: triggers, timers, retries."""

from __future__ import annotations
