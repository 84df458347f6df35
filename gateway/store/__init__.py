"""Durable state: one interface, a SQLite and a PostgreSQL backend."""

from __future__ import annotations
