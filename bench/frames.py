"""µs per message of the socket's hot messages, in this process: decoding a frame of them
(parse and validate; ``gateway`` is how the gateway reads a worker's frame, typed for the
per-run messages), encoding one (pack and join), and the worker building a checkpoint.

Each figure is the best of several rounds over a frame of 500 messages, so it moves little
with the machine's load; copy this file into an older commit's ``bench/`` and run
``python -m bench.frames`` there to compare.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable
from typing import Any

from protocol import codec
from protocol import messages as m
from protocol.codec import decode, encode

RUN_ID = "01JABCDEFGHJKMNPQRSTVWXYZ0"
EVENT = (b'{"name":"bench/go","data":{"i":1},"id":"01JABCDEFGHJKMNPQRSTVWXYZ0",'
         b'"ts":1700000000000,"user":null}')


def _samples() -> dict[str, list[Any]]:
    now = time.time()
    return {
        "step_completed": [m.StepCompleted(seq=i + 1, run_id=RUN_ID, fence=3, step_id="one",
                                           attempt=0, output=b"1", started_at=now,
                                           ended_at=now) for i in range(500)],
        "run_completed": [m.RunCompleted(seq=i + 1, run_id=RUN_ID, fence=3, output=b"6")
                          for i in range(500)],
        "lease_accepted": [m.LeaseAccepted(run_id=RUN_ID, fence=1) for _ in range(500)],
        "lease_granted": [m.LeaseGranted(run_id=RUN_ID, fence=1, function_id="bench/three-steps",
                                         events=[EVENT]) for _ in range(500)],
        "checkpoint_ack": [m.CheckpointAck(upto=i) for i in range(500)],
        "heartbeat": [m.Heartbeat(in_flight=i) for i in range(500)],
    }


def _build() -> list[m.StepCompleted]:
    """500 checkpoints as the worker's runtime builds them (after this session: unvalidated)."""
    fields = {"step_id": "one", "attempt": 0, "output": b"1", "started_at": 1.0,
              "ended_at": 2.0}
    unvalidated = getattr(m, "unvalidated", None)
    if unvalidated is None:  # an older commit
        return [m.StepCompleted(seq=i, run_id=RUN_ID, fence=3, **fields) for i in range(500)]
    return [unvalidated(m.StepCompleted, {"seq": i, "run_id": RUN_ID, "fence": 3,
                                          "type": "step_completed", **fields})
            for i in range(500)]


def _per_message(fn: Callable[[], object], repeat: int) -> float:
    return min(timeit.repeat(fn, number=20, repeat=repeat)) / 20 / 500 * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench frames", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7, help="rounds; the best one counts")
    args = p.parse_args(argv)
    print("µs per message (best of rounds over frames of 500):")
    # An older commit has no typed decoding: the gateway reads with decode() there.
    from_worker = getattr(codec, "decode_from_worker", decode)
    print(f"  {'message':<16} {'decode':>7} {'gateway':>7} {'encode':>7}")
    for name, batch in _samples().items():
        data = encode(batch)
        decoding = _per_message(lambda data=data: decode(data), args.repeat)
        gateway = _per_message(lambda data=data: from_worker(data), args.repeat)
        encoding = _per_message(lambda batch=batch: encode(batch), args.repeat)
        print(f"  {name:<16} {decoding:7.2f} {gateway:7.2f} {encoding:7.2f}")
    print(f"  worker builds a step_completed checkpoint: "
          f"{_per_message(_build, args.repeat):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
