"""e2e tests."""

from __future__ import annotations
