"""``--inngest``: apps written with Inngest's official SDKs (connect mode) run on Tether.

:mod:`~gateway.inngest.bridge` answers the SDK's HTTP calls and accepts its sockets;
:mod:`~gateway.inngest.connection` makes each socket a Tether worker session;
:mod:`~gateway.inngest.executor` drives a leased run through the SDK's request loop;
:mod:`~gateway.inngest.registration` maps the SDK's function configs to Tether options;
:mod:`~gateway.inngest.wire` holds the protobuf schema (needs ``tether[inngest]``).
"""
