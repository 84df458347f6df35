// Inngest's canonical example, written with Inngest's official TypeScript SDK and run on
// Tether unchanged: an event trigger, a throttle of 3 runs a minute, and two steps.
//
//   python -m gateway --dev --inngest
//   npm install inngest@4.24.0
//   INNGEST_DEV=1 INNGEST_BASE_URL=http://127.0.0.1:8288 \
//     NODE_OPTIONS=--experimental-websocket node app.mjs      # Node 20; Node 22+ needs no flag
import { Inngest } from "inngest";
import { connect } from "inngest/connect";

const inngest = new Inngest({ id: "shop" });

const getDataFromExternalSource = async () => [{ id: 1 }, { id: 2 }];
const save = async (data) => data.length;

export const syncSystems = inngest.createFunction(
  {
    id: "sync-systems",
    throttle: { limit: 3, period: "1m" },
    triggers: [{ event: "auto/sync.request" }],
  },
  async ({ step }) => {
    const data = await step.run("get-data", () => getDataFromExternalSource());
    const saved = await step.run("save-data", () => save(data));
    return { saved };
  },
);

await connect({ apps: [{ client: inngest, functions: [syncSystems] }] });
