// What the end-to-end scripts share: a bounded wait, and pusher-js pointed at a node on loopback.
import PusherJS from "pusher-js";

export const TIMEOUT = 8000;

/** `promise`, or a rejection naming `what` once `ms` have passed. */
export function within(promise, what, ms = TIMEOUT) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)),
  ]);
}

/** pusher-js on the node at `host`:`port`, over plain WebSocket and without stats; `options`
 * adds the app's authorization (or overrides any of these). */
export function pusherClient(key, host, port, options = {}) {
  return new PusherJS(key, {
    cluster: "mt1",
    wsHost: host,
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    ...options,
  });
}
