"""Fault loops with exact end-of-run accounting (``python -m bench chaos``).

The rooms:

* ``chaosapp``: the app the workers serve; every step execution is witnessed in a ledger
  (one fsync'd line when it starts, one when it ends) before anything else happens;
* ``driver``: posts events with ids of its own and keeps the history of every request with
  its outcome (ok / failed / unknown), and retries the not-ok ones with the same id at the end;
* ``store``: reads what the gateway committed (runs, steps, events) straight from its database;
* ``checker``: joins history, ledger and store into counters that must be 0;
* ``faults``: the fault loops (processes, network, store, time) over real processes;
* ``proxy``: a seeded frame-level TCP proxy between workers and gateway.

The CI suite (``tests/reliability``) runs each loop a few cycles; ``--long`` runs the issue's
counts.
"""
