"""Helpers the tests share: waiting under a bound, in-process gateways, PostgreSQL databases."""

from __future__ import annotations
