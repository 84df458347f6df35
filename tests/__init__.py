"""Tether's tests: unit (pure), integration (store, engine, sockets), e2e (real processes)."""

from __future__ import annotations
