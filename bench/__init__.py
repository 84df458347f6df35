"""Benchmarks of the hot paths (event intake, leasing, checkpoints) with real processes."""

from __future__ import annotations
