// Pusher cache channels with the unmodified clients: pusher-js subscribes to an empty cache
// channel (pusher:cache_miss), the `pusher` Node SDK triggers on node B, a second pusher-js
// client on node A gets the last event first, and the SDK reads `info=cache`.
// Usage: node cache_e2e.mjs '{"a":"HOST:PORT","b":"HOST:PORT","appId":"1","key":…,"secret":…}'
import PusherServer from "pusher";
import { pusherClient, within } from "./loopback.mjs";

const config = JSON.parse(process.argv[2]);
const [hostA, portA] = config.a.split(":");
const [hostB, portB] = config.b.split(":");


const api = new PusherServer({
  appId: config.appId,
  key: config.key,
  secret: config.secret,
  host: hostB,
  port: portB,
  useTLS: false,
});

function client() {
  return pusherClient(config.key, hostA, portA);
}

/** Subscribes and resolves with the first thing the channel hands the app after success. */
function firstAfterSubscribe(pusher, name) {
  const channel = pusher.subscribe(name);
  return within(
    new Promise((resolve, reject) => {
      channel.bind("pusher:subscription_error", (e) => reject(new Error(JSON.stringify(e))));
      channel.bind_global((event, data) => {
        if (event !== "pusher:subscription_succeeded") resolve({ event, data });
      });
    }),
    `first event on ${name}`,
  );
}

const results = {};
const first = client();
results.empty = await firstAfterSubscribe(first, "cache-prices");

const live = within(
  new Promise((resolve) => first.channel("cache-prices").bind("price", resolve)),
  "live price",
);
const triggered = await api.trigger("cache-prices", "price", { usd: 42 });
results.triggerStatus = triggered.status;
results.live = await live;

const second = client();
results.cached = await firstAfterSubscribe(second, "cache-prices");

const info = await api.get({ path: "/channels/cache-prices", params: { info: "cache" } });
results.info = await info.json();
const refused = await api
  .get({ path: "/channels/prices", params: { info: "cache" } })
  .then((r) => r.status, (e) => e.status);
results.infoOnPlainChannel = refused;

console.log(JSON.stringify(results));
first.disconnect();
second.disconnect();
process.exit(0);
