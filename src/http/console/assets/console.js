// pushlite console. Plain DOM, no framework and no inline code (the Content-Security-Policy
// allows neither). Every value from the server is set as text, never parsed as HTML.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const page = document.body.dataset.page;
const slug = document.body.dataset.slug;
const main = document.getElementById("main");

/** Builds an element: el("a", {href: "/x"}, "text", child…). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

/** Calls the console API; rejects with the server's message. */
async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = csrf;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`/console/api${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 401) {
    location.href = "/console/login";
    throw new Error("logged out");
  }
  const text = await response.text();
  const json = text ? JSON.parse(text) : {};
  if (!response.ok) {
    const error = new Error(describe(json.errors) || `HTTP ${response.status}`);
    error.fields = json.errors;
    throw error;
  }
  return json;
}

function describe(errors) {
  if (!errors) return "";
  if (errors.detail) return errors.detail;
  return Object.entries(errors)
    .map(([field, messages]) => `${field} ${[].concat(messages).join(", ")}`)
    .join("; ");
}

function show(...children) {
  main.replaceChildren(...children);
}

function status(node, text, ok) {
  node.textContent = text;
  node.className = ok ? "notice" : "error";
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy";
  }
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

function badge(active) {
  return el("span", { class: active ? "badge on" : "badge off" }, active ? "active" : "inactive");
}

function every(ms, fn) {
  fn();
  const timer = setInterval(fn, ms);
  addEventListener("pagehide", () => clearInterval(timer));
}

// ---- Apps ---------------------------------------------------------------------------------

function appsPage() {
  const body = el("tbody");
  const note = el("p", { class: "muted", "aria-live": "polite" });
  show(
    el("div", { class: "row spread" },
      el("h1", {}, "Apps"),
      el("a", { class: "button primary", href: "/console/apps/new" }, "New app")),
    el("div", { class: "table-wrap" },
      el("table", {},
        el("caption", { class: "skip" }, "Apps, with usage over the last minute on every node"),
        el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "Name"),
          el("th", { scope: "col", class: "hide-narrow" }, "Slug"),
          el("th", { scope: "col" }, "Status"),
          el("th", { scope: "col", class: "num" }, "Connections"),
          el("th", { scope: "col", class: "num" }, "Events / min"),
          el("th", { scope: "col", class: "num hide-narrow" }, "Deliveries / min"))),
        body)),
    note);
  every(5000, async () => {
    try {
      const { data, nodes } = await api("GET", "/overview");
      body.replaceChildren(...data.map((app) => el("tr", {},
        el("td", {}, el("a", { href: `/console/apps/${app.slug}` }, app.name)),
        el("td", { class: "mono hide-narrow" }, app.slug),
        el("td", {}, badge(app.active)),
        el("td", { class: "num" }, app.connections),
        el("td", { class: "num" }, app.events_last_minute),
        el("td", { class: "num hide-narrow" }, app.deliveries_last_minute))));
      note.textContent = data.length
        ? `Usage summed over ${nodes} node${nodes === 1 ? "" : "s"}; refreshed every 5 s.`
        : "No apps yet: create the first one.";
    } catch (error) {
      status(note, error.message, false);
    }
  });
}

function newAppPage() {
  const message = el("p", { role: "alert" });
  const form = el("form", { class: "card stack" },
    el("label", { for: "name" }, "Name"),
    el("input", { id: "name", name: "name", required: true, maxlength: "100", autocomplete: "off" }),
    el("p", { class: "muted" }, "The slug (used in topics and URLs) is made from the name."),
    el("label", { for: "origins" }, "Allowed origins (one per line; empty allows any)"),
    el("textarea", { id: "origins", name: "origins", placeholder: "https://example.com" }),
    el("label", { class: "check" }, el("input", { type: "checkbox", id: "client_events", checked: true }), "Allow client events"),
    el("label", { class: "check" }, el("input", { type: "checkbox", id: "active", checked: true }), "Active"),
    el("button", { type: "submit", class: "primary" }, "Create app"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const { data } = await api("POST", "/apps", { app: {
        name: form.querySelector("#name").value,
        allowed_origins: lines(form.querySelector("#origins").value),
        client_events: form.querySelector("#client_events").checked,
        active: form.querySelector("#active").checked,
      } });
      location.href = `/console/apps/${data.slug}`;
    } catch (error) {
      status(message, error.message, false);
    }
  });
  show(el("h1", {}, "New app"), form);
  form.querySelector("#name").focus();
}

function lines(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean);
}

// ---- One app ------------------------------------------------------------------------------

async function appPage() {
  let app;
  try {
    app = (await api("GET", `/apps/${slug}`)).data;
  } catch (error) {
    show(el("h1", {}, "App"), el("p", { class: "error", role: "alert" }, error.message));
    return;
  }
  const message = el("p", { role: "status", "aria-live": "polite" });
  const secretText = el("code", { id: "secret" }, "••••••••••••••••");
  let revealed = false;
  const reveal = el("button", { type: "button", id: "reveal", "aria-controls": "secret" }, "Reveal");
  reveal.addEventListener("click", () => {
    revealed = !revealed;
    secretText.textContent = revealed ? app.secret : "••••••••••••••••";
    reveal.textContent = revealed ? "Hide" : "Reveal";
  });
  const copyKey = el("button", { type: "button", "aria-label": "Copy the key" }, "Copy");
  copyKey.addEventListener("click", () => copy(app.key, copyKey));
  const copySecret = el("button", { type: "button", "aria-label": "Copy the secret" }, "Copy");
  copySecret.addEventListener("click", () => copy(app.secret, copySecret));

  const confirmBox = el("div");
  function confirmThen(text, label, action) {
    const yes = el("button", { type: "button", class: "danger" }, label);
    const no = el("button", { type: "button" }, "Cancel");
    yes.addEventListener("click", async () => {
      confirmBox.replaceChildren();
      await action();
    });
    no.addEventListener("click", () => confirmBox.replaceChildren());
    confirmBox.replaceChildren(el("div", { class: "confirm", role: "alertdialog", "aria-label": label },
      el("p", {}, text), el("div", { class: "row" }, yes, no)));
    no.focus();
  }

  const rotate = el("button", { type: "button", id: "rotate" }, "Rotate secret");
  rotate.addEventListener("click", () => confirmThen(
    "Rotate the secret? Servers still using the old one are refused (401) at once, and private channels authorized with it are closed.",
    "Yes, rotate the secret",
    async () => {
      try {
        app = (await api("POST", `/apps/${slug}/rotate_secret`)).data;
        revealed = true;
        secretText.textContent = app.secret;
        reveal.textContent = "Hide";
        status(message, "Secret rotated.", true);
      } catch (error) {
        status(message, error.message, false);
      }
    }));

  const toggle = el("button", { type: "button", id: "toggle" }, app.active ? "Deactivate" : "Activate");
  const state = el("span", {}, badge(app.active));
  toggle.addEventListener("click", async () => {
    try {
      app = (await api("PATCH", `/apps/${slug}`, { app: { active: !app.active } })).data;
      toggle.textContent = app.active ? "Deactivate" : "Activate";
      state.replaceChildren(badge(app.active));
      status(message, app.active ? "App activated." : "App deactivated: its sockets were closed and its triggers are refused.", true);
    } catch (error) {
      status(message, error.message, false);
    }
  });

  const remove = el("button", { type: "button", class: "danger", id: "delete" }, "Delete app");
  remove.addEventListener("click", () => confirmThen(
    `Delete ${app.name}? Its sockets are closed and its key stops working. This cannot be undone.`,
    "Yes, delete the app",
    async () => {
      try {
        await api("DELETE", `/apps/${slug}`);
        location.href = "/console";
      } catch (error) {
        status(message, error.message, false);
      }
    }));

  const settings = settingsForm(app, message, (updated) => (app = updated));
  const usage = el("div", { class: "grid" });
  const chart = el("div", { class: "chart" });

  show(
    el("div", { class: "row spread" },
      el("h1", {}, app.name, " ", state),
      el("a", { class: "button primary", href: `/console/apps/${slug}/debug` }, "Debug console")),
    message,
    el("section", { class: "card", "aria-labelledby": "credentials" },
      el("h2", { id: "credentials" }, "Credentials"),
      el("p", { class: "muted" }, "Slug (the app id of the Pusher API): ", el("code", { id: "slug" }, app.slug)),
      el("p", { class: "field" }, "Key"),
      el("div", { class: "secret" }, el("code", { id: "key" }, app.key), copyKey),
      el("p", { class: "field" }, "Secret"),
      el("div", { class: "secret" }, secretText, reveal, copySecret),
      el("div", { class: "row" }, rotate, toggle, remove),
      confirmBox),
    el("section", { class: "card", "aria-labelledby": "usage" },
      el("h2", { id: "usage" }, "Usage"), usage, chart),
    settings,
    el("section", { class: "card", "aria-labelledby": "trigger" },
      el("h2", { id: "trigger" }, "Trigger from your server"),
      el("p", { class: "muted" }, "The article's request, with this app's key and secret:"),
      el("pre", {}, curl(app))));
  every(5000, () => refreshUsage(usage, chart));
}

function curl(app) {
  return `curl -u ${app.key}:<secret> \\\n  -d topic=chat -d event=msg -d scope=public \\\n  -d 'payload={"text":"hello"}' \\\n  ${location.origin}/api/apps/${app.slug}/events`;
}

function settingsForm(app, message, updated) {
  const form = el("form", { class: "card stack", "aria-labelledby": "settings" },
    el("h2", { id: "settings" }, "Settings"),
    el("label", { for: "origins" }, "Allowed origins (one per line; empty allows any)"),
    el("textarea", { id: "origins" }, app.allowed_origins.join("\n")),
    el("label", { class: "check" }, el("input", { type: "checkbox", id: "client_events", checked: app.client_events }), "Allow client events"),
    el("label", { for: "max_presence_members" }, "Members per presence channel"),
    el("input", { id: "max_presence_members", type: "number", min: "1", value: app.max_presence_members }),
    el("label", { for: "history_size" }, "History: events kept per channel (0 keeps none)"),
    el("input", { id: "history_size", type: "number", min: "0", value: app.history_size }),
    el("label", { for: "history_ttl_secs" }, "History: seconds kept after the latest event"),
    el("input", { id: "history_ttl_secs", type: "number", min: "1", value: app.history_ttl_secs }),
    el("label", { for: "max_connections" }, "Connections at most, cluster-wide (empty: the node's global limit; 0: none)"),
    el("input", { id: "max_connections", type: "number", min: "0", value: app.max_connections ?? "" }),
    el("label", { for: "max_triggers_per_sec" }, "HTTP events per second at most (empty: the global limit; 0: none)"),
    el("input", { id: "max_triggers_per_sec", type: "number", min: "0", value: app.max_triggers_per_sec ?? "" }),
    el("label", { for: "webhook_max_queue" }, "Webhook events queued at most (empty: the global share; 0: only the whole queue's limit)"),
    el("input", { id: "webhook_max_queue", type: "number", min: "0", value: app.webhook_max_queue ?? "" }),
    el("label", { for: "webhooks" }, "Webhooks (JSON: [{\"url\": …, \"events\": [\"channel_occupied\", …]}])"),
    el("textarea", { id: "webhooks" }, JSON.stringify(app.webhooks.map(({ url, events }) => ({ url, events })), null, 1)),
    webhookStatus(app),
    el("button", { type: "submit", class: "primary" }, "Save settings"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let webhooks;
    try {
      webhooks = JSON.parse(form.querySelector("#webhooks").value || "[]");
    } catch {
      status(message, "Webhooks must be valid JSON.", false);
      return;
    }
    try {
      const { data } = await api("PATCH", `/apps/${app.slug}`, { app: {
        allowed_origins: lines(form.querySelector("#origins").value),
        client_events: form.querySelector("#client_events").checked,
        max_presence_members: Number(form.querySelector("#max_presence_members").value),
        history_size: Number(form.querySelector("#history_size").value),
        history_ttl_secs: Number(form.querySelector("#history_ttl_secs").value),
        max_connections: quota(form.querySelector("#max_connections").value),
        max_triggers_per_sec: quota(form.querySelector("#max_triggers_per_sec").value),
        webhook_max_queue: quota(form.querySelector("#webhook_max_queue").value),
        webhooks,
      } });
      updated(data);
      status(message, "Settings saved.", true);
    } catch (error) {
      status(message, error.message, false);
    }
  });
  return form;
}

// An empty quota field follows the global limit (null).
function quota(value) {
  return value.trim() === "" ? null : Number(value);
}

function webhookStatus(app) {
  if (!app.webhooks.length) return null;
  return el("ul", { class: "muted" }, app.webhooks.map((hook) => el("li", {},
    el("code", {}, hook.url), ": ",
    hook.last_attempt_at
      ? `last attempt ${new Date(hook.last_attempt_at).toLocaleString()}, ${hook.last_status ?? hook.last_error ?? "no answer"}`
      : "no attempt yet")));
}

async function refreshUsage(usage, chart) {
  try {
    const { data } = await api("GET", `/apps/${slug}/stats`);
    const stat = (label, value) => el("div", { class: "stat" }, el("b", {}, value), label);
    usage.replaceChildren(
      stat("connections", data.connections),
      stat("events, last minute", data.events_published.last_minute),
      stat("deliveries, last minute", data.messages_delivered.last_minute),
      stat("channels in use", Object.keys(data.topics).length),
      stat(`node${data.nodes === 1 ? "" : "s"}`, data.nodes));
    drawChart(chart, data.series);
  } catch (error) {
    usage.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

/** Events and deliveries per bucket over the last minutes, as an SVG line chart. */
function drawChart(chart, series) {
  const buckets = series.buckets;
  const width = 600, height = 180, left = 40, bottom = 20, top = 10;
  const max = Math.max(1, ...buckets.map((b) => Math.max(b.events, b.deliveries)));
  const x = (i) => left + (i * (width - left - 6)) / Math.max(1, buckets.length - 1);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const line = (key) => buckets.map((b, i) => `${x(i).toFixed(1)},${y(b[key]).toFixed(1)}`).join(" ");
  const minutes = (buckets.length * series.bucket_secs) / 60;
  const total = (key) => buckets.reduce((sum, b) => sum + b[key], 0);
  const image = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", preserveAspectRatio: "none",
    "aria-label": `Events (${total("events")}) and deliveries (${total("deliveries")}) over the last ${minutes} minutes, per ${series.bucket_secs} seconds`,
  });
  image.append(
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }),
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }));
  const label = (text, attrs) => { const t = svg("text", attrs); t.textContent = text; return t; };
  image.append(
    label(String(max), { x: 4, y: top + 10 }),
    label("0", { x: 4, y: height - bottom }),
    label(`-${minutes} min`, { x: left, y: height - 4 }),
    label("now", { x: width - 30, y: height - 4 }),
    svg("polyline", { class: "deliveries", points: line("deliveries") }),
    svg("polyline", { class: "events", points: line("events") }));
  chart.replaceChildren(
    el("div", { class: "legend" },
      el("span", { class: "events" }, `events per ${series.bucket_secs} s`),
      el("span", { class: "deliveries" }, "deliveries")),
    image);
}

// ---- Debug console ------------------------------------------------------------------------

const MAX_ROWS = 500;

function debugPage() {
  const rows = el("tbody", { id: "log" });
  const info = el("p", { class: "muted", id: "stream-status", role: "status" }, "Connecting…");
  const counts = el("p", { class: "muted", id: "stream-counts" });
  const filter = el("input", { id: "filter", type: "search", placeholder: "all channels", autocomplete: "off" });
  const pause = el("button", { type: "button", "aria-pressed": "false" }, "Pause");
  const clear = el("button", { type: "button" }, "Clear");
  let paused = false, skipped = 0, lost = 0, shown = 0;
  const held = [];

  function matches(record) {
    const wanted = filter.value.trim();
    return !wanted || (record.channel || "").includes(wanted);
  }
  function applyFilter() {
    for (const row of rows.children) row.hidden = !matches(row.record);
  }
  filter.addEventListener("input", applyFilter);
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) held.splice(0).forEach(add);
  });
  clear.addEventListener("click", () => {
    rows.replaceChildren();
    shown = skipped = lost = 0;
    updateCounts();
  });

  function details(record) {
    const parts = [];
    if (record.event) parts.push(el("b", {}, record.event));
    if (record.data) parts.push(" ", el("span", {}, record.data));
    if (record.reason) parts.push(el("span", { class: "reason" }, record.reason));
    if (record.protocol) parts.push(" ", el("span", { class: "muted" }, `${record.protocol}${record.socket ? " " + record.socket : ""}`));
    return parts;
  }
  function add(record) {
    const row = el("tr", { class: `kind-${record.kind}` },
      el("td", { class: "hide-narrow" }, new Date(record.at).toLocaleTimeString()),
      el("td", { class: "kind" }, record.kind.replace("_", " ")),
      el("td", {}, record.channel || ""),
      el("td", {}, details(record)),
      el("td", { class: "hide-narrow muted" }, record.node));
    row.record = record;
    row.hidden = !matches(record);
    rows.prepend(row);
    while (rows.children.length > MAX_ROWS) rows.lastChild.remove();
  }
  function updateCounts() {
    counts.textContent = `${shown} shown · ${skipped} skipped by the rate cap · ${lost} lost (this view fell behind)`;
  }

  const source = new EventSource(`/console/api/apps/${slug}/debug`);
  source.addEventListener("hello", (event) => {
    const hello = JSON.parse(event.data);
    info.textContent = `Live, through node ${hello.node}. Each node sends at most ${hello.rate_per_node} records a second for this app; the rest are counted as skipped. Payloads are cut at ${hello.data_max_bytes} bytes.`;
    info.dataset.live = "true";
    updateCounts();
  });
  source.addEventListener("lost", (event) => {
    lost = JSON.parse(event.data).lost;
    updateCounts();
  });
  source.addEventListener("message", (event) => {
    const record = JSON.parse(event.data);
    skipped += record.skipped || 0;
    shown += 1;
    if (!paused) add(record);
    else if (held.push(record) > MAX_ROWS) held.shift();
    updateCounts();
  });
  source.addEventListener("error", () => {
    info.dataset.live = "false";
    // The browser retries a dropped stream by itself, but not one that was refused (the
    // session ended, or this node serves too many viewers).
    info.textContent = source.readyState === EventSource.CLOSED
      ? "The stream was refused: reload the page (or log in again)."
      : "Disconnected; reconnecting…";
  });
  addEventListener("pagehide", () => source.close());

  show(
    el("div", { class: "row spread" },
      el("h1", {}, "Debug console: ", el("a", { href: `/console/apps/${slug}` }, slug))),
    info,
    testEventForm(),
    el("section", { class: "card", "aria-labelledby": "stream" },
      el("h2", { id: "stream" }, "Live events"),
      el("div", { class: "row" },
        el("label", { for: "filter" }, "Filter by channel"), filter, pause, clear),
      counts,
      el("div", { class: "table-wrap" },
        el("table", { class: "log" },
          el("caption", { class: "skip" }, "Newest first"),
          el("thead", {}, el("tr", {},
            el("th", { scope: "col", class: "hide-narrow" }, "Time"),
            el("th", { scope: "col" }, "Type"),
            el("th", { scope: "col" }, "Channel"),
            el("th", { scope: "col" }, "Details"),
            el("th", { scope: "col", class: "hide-narrow" }, "Node"))),
          rows))));
}

function testEventForm() {
  const message = el("p", { role: "status", "aria-live": "polite" });
  const form = el("form", { class: "card stack", "aria-labelledby": "send" },
    el("h2", { id: "send" }, "Send a test event"),
    el("label", { for: "scope" }, "Scope"),
    el("select", { id: "scope" }, el("option", { value: "public" }, "public"), el("option", { value: "private" }, "private")),
    el("label", { for: "topic" }, "Topic"),
    el("input", { id: "topic", value: "chat", required: true }),
    el("label", { for: "event-name" }, "Event"),
    el("input", { id: "event-name", value: "msg", required: true }),
    el("label", { for: "payload" }, "Payload (a JSON object)"),
    el("textarea", { id: "payload" }, '{"text": "hello from the console"}'),
    el("button", { type: "submit", class: "primary" }, "Send event"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", `/apps/${slug}/events`, {
        scope: form.querySelector("#scope").value,
        topic: form.querySelector("#topic").value,
        event: form.querySelector("#event-name").value,
        payload: form.querySelector("#payload").value,
      });
      status(message, "Sent.", true);
    } catch (error) {
      status(message, error.message, false);
    }
  });
  return form;
}

// ---- Nodes --------------------------------------------------------------------------------

function nodesPage() {
  const body = el("tbody");
  const note = el("p", { class: "muted", role: "status" });
  show(el("h1", {}, "Nodes"),
    el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Node"),
        el("th", { scope: "col" }, "Version"),
        el("th", { scope: "col", class: "num" }, "Up for"),
        el("th", { scope: "col", class: "num" }, "Connections"))),
      body)),
    note);
  every(5000, async () => {
    try {
      const { data } = await api("GET", "/nodes");
      body.replaceChildren(...data.map((node) => el("tr", {},
        el("td", { class: "mono" }, node.id),
        el("td", {}, node.version),
        el("td", { class: "num" }, uptime(node.started_at)),
        el("td", { class: "num" }, node.connections))));
      note.textContent = `${data.length} live node${data.length === 1 ? "" : "s"}; refreshed every 5 s.`;
    } catch (error) {
      status(note, error.message, false);
    }
  });
}

function uptime(startedAt) {
  let secs = Math.max(0, Math.floor((Date.now() - new Date(startedAt).getTime()) / 1000));
  const d = Math.floor(secs / 86400); secs %= 86400;
  const h = Math.floor(secs / 3600); secs %= 3600;
  const m = Math.floor(secs / 60); secs %= 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${secs}s` : `${secs}s`;
}

({ apps: appsPage, new: newAppPage, app: appPage, debug: debugPage, nodes: nodesPage })[page]();
