"""Flow control decisions, pure: each module is a function of (state, event or key, now).

Nothing here touches the store, the clock or asyncio, but :mod:`.admission`, the glue the
store's transaction calls to admit a run. The store persists each module's state (see
docs/design.md, "Flow control: decisions") and calls the functions inside the transaction that
admits an event or claims a run, so every gateway sharing the database decides the same.

Admission (when an event arrives): :mod:`.keys` (the key of an event), :mod:`.rate_limit`,
:mod:`.idempotency`, :mod:`.singleton`, :mod:`.debounce`, :mod:`.batch`, :mod:`.throttle`.
Queues (when a worker has room): :mod:`.concurrency` (limits and fair order across keys),
:mod:`.priority` (order within a key).
"""
