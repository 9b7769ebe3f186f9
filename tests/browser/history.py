"""A browser tab that loses its connection, in a real headless Chromium (Playwright): the tab
(phoenix.js on node A, the README's recovery lines) shows three messages, its socket is closed
for a few seconds while 20 more are triggered on node B, then it reconnects. Prints the list the
tab shows and its status as JSON.

Usage: history.py '{"a": "HOST:PORT", "b": "HOST:PORT", "slug": …, "key": …, "secret": …,
                    "offMs": N}'
"""

import base64
import json
import sys
import time
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

import pages

config = json.loads(sys.argv[1])
credentials = base64.b64encode(f"{config['key']}:{config['secret']}".encode()).decode()


def trigger(text):
    """The article's curl: a form post to the events API of node B."""
    body = urllib.parse.urlencode(
        {"topic": "chat", "event": "msg", "scope": "public", "payload": json.dumps({"text": text})}
    ).encode()
    request = urllib.request.Request(
        f"http://{config['b']}/api/apps/{config['slug']}/events",
        data=body,
        headers={"authorization": f"Basic {credentials}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status


def until_count(page, count):
    page.wait_for_function(
        "count => document.querySelectorAll('#messages li').length >= count", arg=count, timeout=10_000
    )


origin, server = pages.start(["history.html"])
results = {}
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_context(viewport={"width": 375, "height": 640}).new_page()
    host, port = config["a"].split(":")
    query = urllib.parse.urlencode({"host": host, "port": port, "topic": f"public:{config['slug']}"})
    page.goto(f"{origin}/history.html?{query}")
    page.wait_for_function("document.getElementById('status').textContent === 'joined'", timeout=10_000)
    for n in range(1, 4):
        trigger(f"message {n}")
    until_count(page, 3)

    page.evaluate("socket.disconnect()")
    page.wait_for_function("document.getElementById('status').textContent === 'disconnected'")
    closed = time.monotonic()
    for n in range(4, 24):
        trigger(f"message {n}")
    time.sleep(max(0, config["offMs"] / 1000 - (time.monotonic() - closed)))
    page.evaluate("socket.connect()")
    page.wait_for_function("document.getElementById('status').textContent === 'recovered'", timeout=10_000)
    trigger("message 24")
    until_count(page, 24)
    results["messages"] = page.locator("#messages li").all_text_contents()
    results["status"] = page.locator("#status").text_content()
    page.screenshot(path="target/history-tab.png")
    browser.close()

server.shutdown()
print(json.dumps(results))
