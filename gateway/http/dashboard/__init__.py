"""The dashboard: server-rendered pages at ``GET /`` (see :mod:`.routes`)."""

from __future__ import annotations

from gateway.http.dashboard.routes import dashboard_routes

__all__ = ["dashboard_routes"]
