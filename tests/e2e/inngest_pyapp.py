"""An app written with Inngest's official Python SDK (connect mode), unmodified: the SDK reads
INNGEST_BASE_URL, INNGEST_DEV and INNGEST_SIGNING_KEY from the environment. For
tests/e2e/test_inngest_py.py. Each step appends ``run-key step pid`` to ``ledger.txt``, so a
test can count executions across processes."""
from __future__ import annotations

import asyncio
import datetime
import os
import time

import inngest
from inngest.connect import connect

LEDGER = os.path.join(os.getcwd(), "ledger.txt")

client = inngest.Inngest(app_id="pyapp")


def note(ctx, step):
    with open(LEDGER, "a") as out:
        out.write(f"{ctx.event.data.get('key', '-')} {step} {os.getpid()}\n")


def gate(ctx):
    """Blocks while the file ``go-KEY`` does not exist (a test holds a step mid-way)."""
    path = os.path.join(os.getcwd(), f"go-{ctx.event.data.get('key')}")
    while not os.path.exists(path):
        time.sleep(0.02)


@client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="py/child"))
async def child(ctx: inngest.Context):
    return {"doubled": ctx.event.data["v"] * 2}


@client.create_function(fn_id="flow", trigger=inngest.TriggerEvent(event="py/flow"), retries=1)
async def flow(ctx: inngest.Context):
    def step_a():
        note(ctx, "a")
        return {"n": ctx.event.data.get("n", 0) + 1}

    a = await ctx.step.run("a", step_a)

    def branch(name):
        def run():
            note(ctx, name)
            return name.upper()
        return run

    p = await ctx.group.parallel((lambda: ctx.step.run("p1", branch("p1")),
                                  lambda: ctx.step.run("p2", branch("p2"))))
    await ctx.step.sleep("nap", datetime.timedelta(seconds=1))
    got = await ctx.step.wait_for_event("wait", event="py/go",
                                        if_exp="async.data.key == event.data.key",
                                        timeout=datetime.timedelta(seconds=30))
    kid = await ctx.step.invoke("call", function=child, data={"v": 21})
    ids = await ctx.step.send_event("send", inngest.Event(name="py/sent",
                                                          data={"key": ctx.event.data.get("key")}))

    def flaky():
        note(ctx, "flaky")
        raise ValueError("always broken")

    try:
        await ctx.step.run("flaky", flaky)
        flaky_result = "ran"
    except inngest.StepError as exc:
        flaky_result = f"failed: {exc.message}"
    return {"a": a, "p": list(p), "got": got.data if got else None, "kid": kid,
            "sent": len(ids), "flaky": flaky_result}


@client.create_function(fn_id="serial", trigger=inngest.TriggerEvent(event="py/serial"),
                        concurrency=[inngest.Concurrency(limit=1, key="event.data.group")])
async def serial(ctx: inngest.Context):
    def work():
        with open(os.path.join(os.getcwd(), "spans.txt"), "a") as out:
            started = time.time()
            time.sleep(0.3)
            out.write(f"{ctx.event.data['group']} {started} {time.time()}\n")
        return ctx.event.data["key"]

    return await ctx.step.run("work", work)


@client.create_function(fn_id="slow", trigger=inngest.TriggerEvent(event="py/slow"))
async def slow(ctx: inngest.Context):
    def first():
        note(ctx, "first")
        return 1

    def held():
        note(ctx, "held")
        gate(ctx)
        return 2

    one = await ctx.step.run("first", first)
    two = await ctx.step.run("held", held)
    return one + two


async def boom_failed(ctx: inngest.Context):
    failed = ctx.event.data
    return {"failed": failed["event"]["name"], "error": failed["error"]["message"]}


@client.create_function(fn_id="boom", trigger=inngest.TriggerEvent(event="py/boom"), retries=0,
                        on_failure=boom_failed)
async def boom(ctx: inngest.Context):
    raise inngest.NonRetriableError("nope")


async def main():
    await connect([(client, [child, flow, slow, boom, serial])],
                  instance_id=f"pyapp-{os.getpid()}").start()


if __name__ == "__main__":
    asyncio.run(main())
