"""The worker socket: server, per-connection pump, handshake authentication."""

from __future__ import annotations
