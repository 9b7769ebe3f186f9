"""Two browser tabs on a presence channel, on two pushlite nodes, in a real headless Chromium
(Playwright): pusher-js tabs and a phoenix.js tab list each other; then the node of one tab is
killed with SIGKILL and the others' lists must drop its member. Prints what the tabs showed
as JSON.

Usage: presence.py '{"a": "HOST:PORT", "b": "HOST:PORT", "bPid": N, "key": …, "secret": …,
                     "topicApp": …, "phoenixToken": …, "waitMs": N}'
"""

import hashlib
import hmac
import json
import os
import signal
import sys
import time
import urllib.parse

from playwright.sync_api import sync_playwright

import pages

config = json.loads(sys.argv[1])
CHANNEL = "presence-room"


def auth(form):
    """The app's Pusher auth endpoint."""
    socket_id, channel, user = form["socket_id"][0], form["channel_name"][0], form["user"][0]
    channel_data = json.dumps({"user_id": user, "user_info": {"name": user.title()}})
    string = f"{socket_id}:{channel}:{channel_data}".encode()
    signature = hmac.new(config["secret"].encode(), string, hashlib.sha256).hexdigest()
    return 200, json.dumps({"auth": f"{config['key']}:{signature}", "channel_data": channel_data}).encode()


origin, server = pages.start(["presence.html"], auth)


def pusher_tab(context, node, user):
    host, port = node.split(":")
    query = urllib.parse.urlencode(
        {"client": "pusher", "host": host, "port": port, "key": config["key"], "channel": CHANNEL, "user": user}
    )
    page = context.new_page()
    page.goto(f"{origin}/presence.html?{query}")
    return page


def phoenix_tab(context, node):
    host, port = node.split(":")
    query = urllib.parse.urlencode(
        {"client": "phoenix", "host": host, "port": port, "topic": f"{CHANNEL}:{config['topicApp']}",
         "token": config["phoenixToken"]}
    )
    page = context.new_page()
    page.goto(f"{origin}/presence.html?{query}")
    return page


def members(page):
    return page.locator("#members li").all_text_contents()


def until_members(page, expected, timeout_ms):
    page.wait_for_function(
        "expected => JSON.stringify([...document.querySelectorAll('#members li')].map(li => li.textContent))"
        " === JSON.stringify(expected)",
        arg=expected,
        timeout=timeout_ms,
    )


results = {}
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    context = browser.new_context(viewport={"width": 375, "height": 640})
    ann = pusher_tab(context, config["a"], "ann")
    bob = pusher_tab(context, config["b"], "bob")
    phoebe = phoenix_tab(context, config["a"])
    everyone = ["ann", "bob", "phoebe"]
    for page in (ann, bob, phoebe):
        until_members(page, everyone, 10_000)
    results["before"] = {"ann": members(ann), "bob": members(bob), "phoebe": members(phoebe)}

    os.kill(config["bPid"], signal.SIGKILL)
    killed = time.monotonic()
    until_members(ann, ["ann", "phoebe"], config["waitMs"])
    results["annDroppedBobMs"] = round((time.monotonic() - killed) * 1000)
    until_members(phoebe, ["ann", "phoebe"], config["waitMs"])
    results["after"] = {"ann": members(ann), "phoebe": members(phoebe)}
    browser.close()

server.shutdown()
print(json.dumps(results))
