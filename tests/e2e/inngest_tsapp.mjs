// An app written with Inngest's official TypeScript SDK (connect mode), unmodified: the SDK
// reads INNGEST_BASE_URL and INNGEST_DEV from the environment. For tests/e2e/test_inngest_ts.py.
// Each step appends "run-key step pid" to ledger.txt, so a test can count executions.
import { existsSync, appendFileSync } from "node:fs";
import { Inngest, NonRetriableError } from "inngest";
import { connect } from "inngest/connect";

const inngest = new Inngest({ id: "tsapp" });

const note = (event, step) =>
  appendFileSync("ledger.txt", `${event.data.key ?? "-"} ${step} ${process.pid}\n`);

// Holds a step until the file go-KEY exists (a test stops a step mid-way).
const gate = async (event) => {
  while (!existsSync(`go-${event.data.key}`)) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

const child = inngest.createFunction(
  { id: "child", triggers: [{ event: "ts/child" }] },
  async ({ event }) => ({ doubled: event.data.v * 2 }),
);

const flow = inngest.createFunction(
  { id: "flow", retries: 1, triggers: [{ event: "ts/flow" }] },
  async ({ event, step }) => {
    const a = await step.run("a", () => {
      note(event, "a");
      return { n: (event.data.n ?? 0) + 1 };
    });
    const p = await Promise.all([
      step.run("p1", () => { note(event, "p1"); return "P1"; }),
      step.run("p2", () => { note(event, "p2"); return "P2"; }),
    ]);
    await step.sleep("nap", "1s");
    const got = await step.waitForEvent("wait", {
      event: "ts/go", timeout: "30s", if: "async.data.key == event.data.key",
    });
    const kid = await step.invoke("call", { function: child, data: { v: 21 } });
    const sent = await step.sendEvent("send", { name: "ts/sent", data: { key: event.data.key } });
    let flaky;
    try {
      await step.run("flaky", () => { note(event, "flaky"); throw new Error("always broken"); });
      flaky = "ran";
    } catch (err) {
      flaky = `failed: ${err.message}`;
    }
    return { a, p, got: got ? got.data : null, kid, sent: sent.ids.length, flaky };
  },
);

const slow = inngest.createFunction(
  { id: "slow", triggers: [{ event: "ts/slow" }] },
  async ({ event, step }) => {
    const one = await step.run("first", () => { note(event, "first"); return 1; });
    const two = await step.run("held", async () => {
      note(event, "held");
      await gate(event);
      return 2;
    });
    return one + two;
  },
);

const boom = inngest.createFunction(
  {
    id: "boom",
    retries: 0,
    triggers: [{ event: "ts/boom" }],
    onFailure: async ({ event, error }) => ({ failed: event.data.event.name, error: error.message }),
  },
  async () => { throw new NonRetriableError("nope"); },
);

await connect({
  apps: [{ client: inngest, functions: [child, flow, slow, boom] }],
  instanceId: `tsapp-${process.pid}`,
});
