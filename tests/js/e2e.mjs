// Drives a pushlite node with the unmodified official `phoenix` client (over `ws`), as a
// browser page would: join, receive triggered events, push a client event, join a private
// topic with a token minted by a standard JWT library.
// Usage: node e2e.mjs HOST:PORT SLUG KEY SECRET
import { Socket } from "phoenix";
import WebSocket from "ws";
import jwt from "jsonwebtoken";

const [addr, slug, key, secret] = process.argv.slice(2);
const TIMEOUT = 5000;

function within(promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), TIMEOUT)),
  ]);
}

function joined(channel) {
  return within(
    new Promise((resolve, reject) => {
      channel
        .join()
        .receive("ok", resolve)
        .receive("error", (e) => reject(new Error(`join refused: ${JSON.stringify(e)}`)));
    }),
    `join ${channel.topic}`,
  );
}

async function trigger(topic, payload) {
  const response = await fetch(`http://${addr}/api/apps/${slug}/events`, {
    method: "POST",
    headers: {
      authorization: "Basic " + Buffer.from(`${key}:${secret}`).toString("base64"),
      "content-type": "application/x-www-form-urlencoded",
    },
    body: new URLSearchParams({ topic, event: "msg", scope: "public", payload: JSON.stringify(payload) }),
  });
  if (response.status !== 200) throw new Error(`trigger answered ${response.status}`);
}

const results = {};
const socket = new Socket(`ws://${addr}/socket`, { transport: WebSocket, params: {} });
socket.connect();
const channel = socket.channel(`public:${slug}`, {});
await joined(channel);
results.joined = true;

const scoped = new Promise((resolve) => channel.on("foo-topic:msg", resolve));
const general = new Promise((resolve) => channel.on("msg", resolve));
await trigger("foo-topic", { name: "node", message: "scoped" });
results.scoped = await within(scoped, "foo-topic:msg");
await trigger("#general", { name: "node", message: "everyone" });
results.general = await within(general, "msg");

const echoed = new Promise((resolve) => channel.on("chat:msg", resolve));
results.pushReply = await within(
  new Promise((resolve, reject) => {
    channel
      .push("chat:msg", { text: "from node" })
      .receive("ok", () => resolve("ok"))
      .receive("error", (e) => reject(new Error(`push refused: ${JSON.stringify(e)}`)));
  }),
  "push reply",
);
results.echoed = await within(echoed, "client event");

const token = jwt.sign(
  { subscribe: [`private:${slug}`], publish: ["private:*"], sub: "user-1" },
  secret,
  { algorithm: "HS256", expiresIn: 600 },
);
const privateSocket = new Socket(`ws://${addr}/socket`, { transport: WebSocket, params: { token } });
privateSocket.connect();
const privateChannel = privateSocket.channel(`private:${slug}`, {});
await joined(privateChannel);
results.privateJoined = true;

console.log(JSON.stringify(results));
socket.disconnect();
privateSocket.disconnect();
process.exit(0);
