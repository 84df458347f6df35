"""Keys strong enough for a non-dev gateway (it refuses weak ones), shared by the tests."""

from __future__ import annotations

SIGNING_KEY = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
OTHER_SIGNING_KEY = "signkey-0PluuBHVIpw4VjdPya8pocC_ZuCNH2eeLQfwObkA8Fs"
EVENT_KEY = "evtkey-MFuYiPUODFbl8RW7emXlYw"
