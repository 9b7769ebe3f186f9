// The official `phoenix` client recovering what it missed: it joins on node A with the
// README's few lines (join params as a function that sends the last position back), is cut off
// (its socket closed) while events are triggered on node B, and connects again.
// Usage: node history_e2e.mjs '{"a":"HOST:PORT","b":"HOST:PORT","slug":…,"key":…,"secret":…,
//                                "before":3,"missed":100,"after":5}'
// Prints the join replies and the sequence numbers and refs of every event received, in order.
import { Socket } from "phoenix";
import WebSocket from "ws";

const config = JSON.parse(process.argv[2]);
const TIMEOUT = 10000;

let seq = 0;
async function trigger() {
  seq += 1;
  const response = await fetch(`http://${config.b}/api/apps/${config.slug}/events`, {
    method: "POST",
    headers: {
      authorization: "Basic " + Buffer.from(`${config.key}:${config.secret}`).toString("base64"),
      "content-type": "application/json",
    },
    body: JSON.stringify({ topic: "feed", event: "msg", scope: "public", payload: { seq } }),
  });
  if (response.status !== 200) throw new Error(`trigger answered ${response.status}`);
}

// Wakes `until` whenever something arrives.
let wake = () => {};
function until(condition, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), TIMEOUT);
    const check = () => {
      if (condition()) {
        clearTimeout(timer);
        wake = () => {};
        resolve();
      } else {
        wake = check;
      }
    };
    check();
  });
}

const replies = [];
const received = [];

const socket = new Socket(`ws://${config.a}/socket`, {
  transport: WebSocket,
  reconnectAfterMs: () => 100,
  rejoinAfterMs: () => 100,
});
socket.connect();

// The README's snippet: keep the position of the last event shown, send it back on rejoin.
let position = null;
const channel = socket.channel(`public:${config.slug}`, () => (position ? { since: position } : {}));
channel.on("feed:msg", (payload, ref) => {
  if (position && ref) position.offset = Number(ref);
  received.push({ seq: payload.seq, ref });
  wake();
});
channel.join().receive("ok", (reply) => {
  if (!reply.recovered) position = reply.epoch ? { offset: reply.offset, epoch: reply.epoch } : null;
  replies.push(reply);
  wake();
});

await until(() => replies.length === 1, "first join");
for (let i = 0; i < config.before; i++) await trigger();
await until(() => received.length === config.before, "live events before the cut");

socket.disconnect();
await until(() => !socket.isConnected(), "socket closed");
for (let i = 0; i < config.missed; i++) await trigger();

socket.connect();
await until(() => replies.length === 2, "rejoin");
for (let i = 0; i < config.after; i++) await trigger();
// A last event closes the run: frames arrive in order, so anything sent twice, or any missed
// event replayed late, would show before it.
await trigger();
const last = seq;
await until(() => received.some((event) => event.seq === last), "the last event");

console.log(
  JSON.stringify({
    replies,
    seqs: received.map((event) => event.seq),
    refs: received.map((event) => event.ref),
  }),
);
socket.disconnect();
process.exit(0);
