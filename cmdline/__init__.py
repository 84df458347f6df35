"""What both command lines (``python -m gateway``, ``python -m worker``) share: options that
read ``TETHER_*`` environment variables, structured logging, and the event loop they run on.

Kept out of :mod:`protocol`, which does no I/O.
"""
