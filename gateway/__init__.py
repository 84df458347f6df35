"""The gateway: stores events, runs and steps, and leases runs to connected workers."""

from __future__ import annotations
