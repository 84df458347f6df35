"""The HTTP API on port 8288: events, management, health."""

from __future__ import annotations
