// Opens a channel with the unmodified clients, as two browser pages would: pusher-js on node A
// and phoenix.js on node B, on the same channel (and the same presence channel, as one user).
// Holds both for a moment, closes both, and prints what each saw as JSON.
// Usage: node webhooks_e2e.mjs '{"a":"HOST:PORT","b":"HOST:PORT","slug":…,"key":…,"secret":…,
//                               "channel":…,"presence":…,"holdMs":…}'
import PusherServer from "pusher";
import { Socket } from "phoenix";
import WebSocket from "ws";
import jwt from "jsonwebtoken";
import { pusherClient, within } from "./loopback.mjs";

const config = JSON.parse(process.argv[2]);


const [hostA, portA] = config.a.split(":");
const api = new PusherServer({ appId: "1", key: config.key, secret: config.secret, host: hostA, port: portA, useTLS: false });

const pusher = pusherClient(config.key, hostA, portA, {
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) =>
      callback(null, api.authorizeChannel(socketId, channelName, { user_id: "ann", user_info: { name: "Ann" } })),
  },
});

function subscribed(channel) {
  return within(new Promise((resolve, reject) => {
    channel.bind("pusher:subscription_succeeded", () => resolve());
    channel.bind("pusher:subscription_error", (e) => reject(new Error(JSON.stringify(e))));
  }), `pusher-js subscribe ${channel.name}`);
}

const token = jwt.sign(
  { subscribe: [`${config.presence}:${config.slug}`], sub: "ann", exp: Math.floor(Date.now() / 1000) + 600 },
  config.secret,
  { algorithm: "HS256" },
);
const socket = new Socket(`ws://${config.b}/socket`, { transport: WebSocket, params: { token } });
socket.connect();

function joined(channel, topic) {
  return within(new Promise((resolve, reject) => {
    channel.join().receive("ok", resolve).receive("error", (e) => reject(new Error(JSON.stringify(e))));
  }), `phoenix join ${topic}`);
}

const publicTopic = `${config.channel}:${config.slug}`;
const presenceTopic = `${config.presence}:${config.slug}`;
const phxPublic = socket.channel(publicTopic, {});
const phxPresence = socket.channel(presenceTopic, {});
await Promise.all([
  subscribed(pusher.subscribe(config.channel)),
  subscribed(pusher.subscribe(config.presence)),
  joined(phxPublic, publicTopic),
  joined(phxPresence, presenceTopic),
]);
await new Promise((resolve) => setTimeout(resolve, config.holdMs));
pusher.disconnect();
await new Promise((resolve) => socket.disconnect(resolve));
console.log(JSON.stringify({ pusher: "closed", phoenix: "closed" }));
process.exit(0);
