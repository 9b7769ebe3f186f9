// Drives two pushlite nodes (sharing Redis) with the unmodified Pusher clients: pusher-js 8,
// Laravel Echo with its pusher connector, the `pusher` Node SDK for the HTTP API, and the
// official `phoenix` client on the same channels. Prints what each client saw as JSON.
// Usage: node pusher_e2e.mjs '{"a":"HOST:PORT","b":"HOST:PORT","appId":"1","slug":…,"key":…,"secret":…}'
import PusherJS from "pusher-js";
import PusherServer from "pusher";
import Echo from "laravel-echo";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { TIMEOUT, pusherClient, within } from "./loopback.mjs";

const config = JSON.parse(process.argv[2]);
const MASTER_KEY = Buffer.alloc(32, 7).toString("base64");


const [hostA, portA] = config.a.split(":");
const [hostB, portB] = config.b.split(":");

/** The Node server SDK, talking to node `addr`. */
function sdk(host, port) {
  return new PusherServer({
    appId: config.appId,
    key: config.key,
    secret: config.secret,
    host,
    port,
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });
}
const apiA = sdk(hostA, portA);
const apiB = sdk(hostB, portB);

/** A pusher-js client on a node, authorizing through the SDK as an app's auth endpoint would. */
function client(host, port, userId) {
  return pusherClient(config.key, host, port, {
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) =>
        callback(null, apiA.authorizeChannel(socketId, channelName)),
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) =>
        callback(null, apiA.authenticateUser(socketId, { id: userId, user_info: { name: userId } })),
    },
  });
}

function connected(pusher) {
  return within(
    new Promise((resolve, reject) => {
      if (pusher.connection.state === "connected") return resolve(pusher.connection.socket_id);
      pusher.connection.bind("connected", () => resolve(pusher.connection.socket_id));
      pusher.connection.bind("failed", () => reject(new Error("connection failed")));
    }),
    "connect",
  );
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

/** Resolves with the data of the next `event` on `bindable`. */
function next(bindable, event, what = event) {
  return within(
    new Promise((resolve) => {
      const handler = (data, meta) => {
        bindable.unbind(event, handler);
        resolve({ data, meta });
      };
      bindable.bind(event, handler);
    }),
    what,
  );
}

/** Resolves true when `event` does not arrive within `ms`. */
function silent(bindable, event, ms = 700) {
  return new Promise((resolve) => {
    const handler = () => resolve(false);
    bindable.bind(event, handler);
    setTimeout(() => {
      bindable.unbind(event, handler);
      resolve(true);
    }, ms);
  });
}

/** Polls the HTTP API until `check` holds (channel figures are summed from every node). */
async function eventually(fetch, check, what) {
  const deadline = Date.now() + TIMEOUT;
  let last;
  while (Date.now() < deadline) {
    last = await fetch();
    if (check(last)) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what}: last answer ${JSON.stringify(last)}`);
}

async function json(responsePromise) {
  const response = await responsePromise;
  return response.json();
}

const results = {};

// Two pusher-js clients, one per node.
const alice = client(hostA, portA, "alice");
const bob = client(hostB, portB, "bob");
results.socketId = await connected(alice);
await connected(bob);

// Public channel, across nodes: SDK on node B, client on node A.
const alicePublic = await subscribed(alice, "public");
let arrived = next(alicePublic, "hello");
await apiB.trigger("public", "hello", { text: "from the node SDK" });
results.publicHello = (await arrived).data;

// The seed's events API (the article's curl) arrives on the Pusher channel `public`.
arrived = next(alicePublic, "foo-topic:msg");
const seed = await fetch(`http://${config.b}/api/apps/${config.slug}/events`, {
  method: "POST",
  headers: {
    authorization: "Basic " + Buffer.from(`${config.key}:${config.secret}`).toString("base64"),
    "content-type": "application/json",
  },
  body: JSON.stringify({ topic: "foo-topic", event: "msg", scope: "public", payload: { name: "curl", message: "hi" } }),
});
results.seedStatus = seed.status;
results.seedEvent = (await arrived).data;

// The official phoenix client on `public:<slug>` receives what the Pusher SDK triggers.
const phoenix = new Socket(`ws://${config.b}/socket`, { transport: WebSocket, params: {} });
phoenix.connect();
const phx = phoenix.channel(`public:${config.slug}`);
await within(
  new Promise((resolve, reject) => phx.join().receive("ok", resolve).receive("error", reject)),
  "phoenix join",
);
let phxArrived = within(new Promise((resolve) => phx.on("hello", resolve)), "phoenix hello");
await apiA.trigger("public", "hello", { text: "to phoenix" });
results.phoenixHello = await phxArrived;
phxArrived = within(new Promise((resolve) => phx.on("plain", resolve)), "phoenix plain");
await apiA.trigger("public", "plain", "just text");
results.phoenixPlain = await phxArrived;

// Private channel on both nodes; socket_id exclusion crosses nodes.
const alicePrivate = await subscribed(alice, "private-chat");
const bobPrivate = await subscribed(bob, "private-chat");
const aliceSilent = silent(alicePrivate, "excluded");
arrived = next(bobPrivate, "excluded");
await apiB.trigger("private-chat", "excluded", { n: 1 }, { socket_id: alice.connection.socket_id });
results.excludedReachedBob = (await arrived).data;
results.excludedSkippedAlice = await aliceSilent;

// Client events: relayed to the other node, never echoed to the sender.
const echoSilent = silent(alicePrivate, "client-typing");
arrived = next(bobPrivate, "client-typing");
results.clientTriggered = alicePrivate.trigger("client-typing", { who: "alice" });
results.clientEvent = (await arrived).data;
results.clientNotEchoed = await echoSilent;

// A private channel refused without a valid signature.
const forged = pusherClient(config.key, hostA, portA, {
  channelAuthorization: {
    customHandler: (_, callback) => callback(null, { auth: `${config.key}:${"0".repeat(64)}` }),
  },
});
await connected(forged);
const refused = forged.subscribe("private-chat");
results.forgedRefusal = (await next(refused, "pusher:subscription_error")).data;
forged.disconnect();

// Encrypted channel: the SDK encrypts, pusher-js decrypts, the server only relays.
const aliceSecret = await subscribed(alice, "private-encrypted-vault");
arrived = next(aliceSecret, "sealed");
await apiB.trigger("private-encrypted-vault", "sealed", { secret: 42 });
results.decrypted = (await arrived).data;

// Sign-in and sendToUser.
alice.signin();
await within(alice.user.signinDonePromise, "signin");
arrived = next(alice.user, "notice");
await apiB.sendToUser("alice", "notice", { hi: "alice" });
results.userEvent = (await arrived).data;

// Batch, and channel queries summed over both nodes.
const batchSeen = Promise.all([next(alicePublic, "b1"), next(bobPrivate, "b2")]);
const batch = await json(
  apiA.triggerBatch([
    { channel: "public", name: "b1", data: { i: 1 } },
    { channel: "private-chat", name: "b2", data: { i: 2 }, info: "subscription_count" },
  ]),
);
results.batchResponse = batch;
results.batchSeen = (await batchSeen).map((e) => e.data);
results.channels = await eventually(
  () => json(apiB.get({ path: "/channels", params: { info: "subscription_count" } })),
  (body) => body.channels?.["private-chat"]?.subscription_count === 2,
  "channel list",
);
results.channel = await json(
  apiA.get({ path: "/channels/private-chat", params: { info: "subscription_count" } }),
);
results.emptyChannel = await json(apiA.get({ path: "/channels/nobody-here", params: {} }));
try {
  await apiA.get({ path: "/channels/public/users", params: {} });
  results.usersOfPublic = "accepted";
} catch (e) {
  results.usersOfPublic = e.status;
}

// Laravel Echo with the pusher connector, on node B.
const echo = new Echo({
  broadcaster: "pusher",
  key: config.key,
  cluster: "mt1",
  wsHost: hostB,
  wsPort: Number(portB),
  forceTLS: false,
  enabledTransports: ["ws"],
  disableStats: true,
  Pusher: PusherJS,
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) =>
      callback(null, apiA.authorizeChannel(socketId, channelName)),
  },
});
const echoEvent = within(
  new Promise((resolve) => {
    echo.channel("orders").listen(".OrderShipped", resolve);
    echo.private("room").listen(".Whisper", resolve);
  }),
  "echo event",
);
await eventually(
  () => json(apiA.get({ path: "/channels/orders", params: {} })),
  (body) => body.occupied === true,
  "echo subscribed orders",
);
await eventually(
  () => json(apiA.get({ path: "/channels/private-room", params: {} })),
  (body) => body.occupied === true,
  "echo subscribed private-room",
);
await apiA.trigger("orders", "OrderShipped", { order: { id: 7 } });
results.echoPublic = await echoEvent;
const echoPrivate = within(
  new Promise((resolve) => echo.private("room").listen(".Secret", resolve)),
  "echo private",
);
await apiA.trigger("private-room", "Secret", { ok: true });
results.echoPrivate = await echoPrivate;
echo.disconnect();

// terminate_connections closes every connection of the signed-in user with 4009.
const closed = within(
  new Promise((resolve) => alice.connection.bind("error", (e) => resolve(e?.data?.code ?? e?.error?.data?.code))),
  "terminate",
);
results.terminateResponse = await json(apiB.terminateUserConnections("alice"));
results.terminatedWith = await closed;

alice.disconnect();
bob.disconnect();
phoenix.disconnect();
console.log(JSON.stringify(results));
process.exit(0);
