// Presence across three pushlite nodes (sharing Redis) with the unmodified clients: pusher-js
// members, phoenix.js's Presence class over a WebSocket, and phoenix.js over its LongPoll
// transport (chosen outright, and as the fallback when WebSockets are blocked).
// Usage: node presence_e2e.mjs '{"a":…,"b":…,"c":…,"appId":…,"slug":…,"key":…,"secret":…,
//                                "phxToken":…,"lpToken":…}'
import PusherServer from "pusher";
import { Socket, Presence, LongPoll } from "phoenix";
import WebSocket from "ws";
import { pusherClient, within } from "./loopback.mjs";

const config = JSON.parse(process.argv[2]);
const ROOM = "presence-room";
const TOPIC = `${ROOM}:${config.slug}`;


const split = (addr) => addr.split(":");
const [hostA, portA] = split(config.a);
const [hostB, portB] = split(config.b);
const [hostC, portC] = split(config.c);

const api = new PusherServer({
  appId: config.appId,
  key: config.key,
  secret: config.secret,
  host: hostA,
  port: portA,
  useTLS: false,
});

/** A pusher-js member on a node; its app's auth endpoint signs the presence data. */
function member(host, port, userId, name) {
  return pusherClient(config.key, host, port, {
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) =>
        callback(null, api.authorizeChannel(socketId, channelName, { user_id: userId, user_info: { name } })),
    },
  });
}

function subscribed(pusher, name) {
  const channel = pusher.subscribe(name);
  return within(
    new Promise((resolve, reject) => {
      channel.bind("pusher:subscription_succeeded", () => resolve(channel));
      channel.bind("pusher:subscription_error", (e) => reject(new Error(`${name}: ${JSON.stringify(e)}`))); 
    }),
    `subscribe ${name}`,
  );
}

/** Resolves with the first `event` on `channel` whose data satisfies `check`. */
function seen(channel, event, check = () => true) {
  return within(
    new Promise((resolve) => {
      const handler = (data) => {
        if (!check(data)) return;
        channel.unbind(event, handler);
        resolve(data);
      };
      channel.bind(event, handler);
    }),
    event,
  );
}

/** A phoenix.js socket on a node. */
function phoenixSocket(host, port, opts) {
  const socket = new Socket(`ws://${host}:${port}/socket`, { transport: WebSocket, ...opts });
  socket.connect();
  return socket;
}

function joined(channel, what) {
  return within(
    new Promise((resolve, reject) =>
      channel.join().receive("ok", resolve).receive("error", (e) => reject(new Error(`${what}: ${JSON.stringify(e)}`))),
    ),
    what,
  );
}

/** Resolves once `presence` lists exactly `users` (sorted). */
function listing(presence, users, what) {
  const want = JSON.stringify([...users].sort());
  const ids = () => JSON.stringify(presence.list((id) => id).sort());
  return within(
    new Promise((resolve) => {
      if (ids() === want) return resolve();
      const previous = presence.caller.onSync;
      presence.onSync(() => {
        previous();
        if (ids() === want) resolve();
      });
    }),
    what,
  );
}

const results = {};

// alice: pusher-js on node A
const alice = member(hostA, portA, "alice", "Alice");
const aliceRoom = await subscribed(alice, ROOM);
results.aliceFirst = aliceRoom.members.count;

// phx-user: phoenix.js Presence on node B
let addedPhx = seen(aliceRoom, "pusher:member_added", (m) => m.id === "phx-user");
const phx = phoenixSocket(hostB, portB, { params: { token: config.phxToken } });
const phxRoom = phx.channel(TOPIC);
const presence = new Presence(phxRoom);
const joins = [];
presence.onJoin((id, current) => { if (!current) joins.push(id); });
const leaves = [];
presence.onLeave((id, current) => { if (current.metas.length === 0) leaves.push(id); });
await joined(phxRoom, "phoenix join");
await listing(presence, ["alice", "phx-user"], "phoenix sees alice");
const added = await addedPhx;
results.aliceSawPhoenix = { id: added.id, info: added.info };
const aliceMeta = presence.list((id, { metas }) => ({ id, metas })).find((p) => p.id === "alice");
results.phoenixSawAliceMeta = { name: aliceMeta.metas[0].name, hasRef: typeof aliceMeta.metas[0].phx_ref === "string" };

// lp-user: phoenix.js over LongPoll on node C, a member too
const addedLp = seen(aliceRoom, "pusher:member_added", (m) => m.id === "lp-user");
const lp = new Socket(`ws://${hostC}:${portC}/socket`, { transport: LongPoll, params: { token: config.lpToken } });
lp.connect();
const lpRoom = lp.channel(TOPIC);
await joined(lpRoom, "longpoll join");
await addedLp;
await listing(presence, ["alice", "lp-user", "phx-user"], "phoenix sees the LongPoll member");
results.aliceMembers = Object.keys(aliceRoom.members.members).sort();

// LongPoll receives (an SDK trigger) and pushes (a client event the others receive)
const news = within(new Promise((resolve) => lpRoom.on("news", resolve)), "longpoll receives");
await api.trigger(ROOM, "news", { headline: "over long polling" });
results.longPollReceived = await news;
const shoutAtPhx = within(new Promise((resolve) => phxRoom.on("shout", resolve)), "phoenix hears the shout");
const shoutAtAlice = seen(aliceRoom, "shout");
const pushed = within(
  new Promise((resolve, reject) => lpRoom.push("shout", { from: "lp" }).receive("ok", resolve).receive("error", reject)),
  "longpoll push",
);
await pushed;
results.shoutAtPhoenix = await shoutAtPhx;
results.shoutAtAlice = await shoutAtAlice;

// The users API, cluster-wide
const users = await (await api.get({ path: `/channels/${ROOM}/users`, params: {} })).json();
results.users = users.users.map((u) => u.id).sort();

// Leaving: the LongPoll member leaves its channel, then the phoenix member: alice hears both
const removedLp = seen(aliceRoom, "pusher:member_removed", (m) => m.id === "lp-user");
await within(new Promise((resolve) => lpRoom.leave().receive("ok", resolve)), "longpoll leave");
await removedLp;
await listing(presence, ["alice", "phx-user"], "phoenix sees the LongPoll member leave");
const removedPhx = seen(aliceRoom, "pusher:member_removed", (m) => m.id === "phx-user");
await within(new Promise((resolve) => phxRoom.leave().receive("ok", resolve)), "phoenix leave");
await removedPhx;
results.phoenixJoins = joins.sort();
results.phoenixLeaves = leaves.sort();
results.aliceLast = aliceRoom.members.count;

// A page whose WebSockets are blocked: longPollFallbackMs falls back to LongPoll
class BlockedWebSocket {
  constructor() {
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.(new Error("blocked"));
      this.onclose?.({ code: 1006, reason: "blocked", wasClean: false });
    }, 10);
  }
  send() {}
  close() {}
}
const fallback = new Socket(`ws://${hostB}:${portB}/socket`, { transport: BlockedWebSocket, longPollFallbackMs: 300 });
fallback.connect();
const lobby = fallback.channel(`lobby:${config.slug}`);
await joined(lobby, "fallback join");
results.fallbackTransport = fallback.transport === LongPoll ? "LongPoll" : String(fallback.transport?.name);
const hello = within(new Promise((resolve) => lobby.on("hello", resolve)), "fallback receives");
await api.trigger("lobby", "hello", { via: "fallback" });
results.fallbackReceived = await hello;

fallback.disconnect();
lp.disconnect();
phx.disconnect();
alice.disconnect();
console.log(JSON.stringify(results));
process.exit(0);
