"""The web console as a new operator uses it, in a real headless Chromium (Playwright) at phone
width (375 px): pages need a session, a wrong password is refused, login by keyboard, create an
app, see its key and secret, watch its debug console on node A while the article's curl
triggers on node B, see a refused join with its reason, send a test event, rotate the secret
(the old one gets 401), deactivate, check CSRF, delete, log out. Screenshots of every page go
to `shots`. Prints what it saw as JSON; the Rust test asserts it.

Usage: console.py '{"a": "HOST:PORT", "b": "HOST:PORT", "user": …, "password": …,
                    "name": …, "shots": DIR}'
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

config = json.loads(sys.argv[1])
A = f"http://{config['a']}"
B = f"http://{config['b']}"
shots = config["shots"]
os.makedirs(shots, exist_ok=True)
results = {}


def trigger(base, slug, key, secret, text):
    """The article's curl: a form post to the events API, with the app's key:secret."""
    body = urllib.parse.urlencode(
        {"topic": "chat", "event": "msg", "scope": "public", "payload": json.dumps({"text": text})}
    ).encode()
    credentials = base64.b64encode(f"{key}:{secret}".encode()).decode()
    request = urllib.request.Request(
        f"{base}/api/apps/{slug}/events", data=body, headers={"authorization": f"Basic {credentials}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def shot(page, name):
    page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def fits(page):
    """Nothing is wider than the phone's screen."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    context = browser.new_context(viewport={"width": 375, "height": 800})
    # Fail with the step that is stuck, well within the harness's bound.
    context.set_default_timeout(8000)
    page = context.new_page()

    # No page and no API without a session.
    guarded = {}
    for path in ["/console", "/console/nodes", "/console/apps/new", "/console/apps/x/debug"]:
        page.goto(A + path)
        guarded[path] = urllib.parse.urlparse(page.url).path
    guarded["/console/api/apps"] = page.request.get(A + "/console/api/apps").status
    results["guarded"] = guarded

    # A wrong password: refused, slowly, and the form comes back.
    page.goto(A + "/console/login")
    shot(page, "login")
    page.fill("#username", config["user"])
    page.fill("#password", "not-the-password")
    started = time.monotonic()
    page.click("button[type=submit]")
    page.wait_for_selector(".error")
    results["wrongPassword"] = {
        "error": page.inner_text(".error"),
        "ms": round((time.monotonic() - started) * 1000),
        "path": urllib.parse.urlparse(page.url).path,
    }

    # The right one, with the keyboard only: the username field has the focus.
    page.goto(A + "/console/login")
    results["bannerOnLogin"] = page.locator(".banner").count() == 1
    page.keyboard.type(config["user"])
    page.keyboard.press("Tab")
    page.keyboard.type(config["password"])
    page.keyboard.press("Enter")
    page.wait_for_url(A + "/console")
    page.wait_for_selector("text=No apps yet")
    results["loggedIn"] = True

    # Create an app.
    page.click("text=New app")
    page.wait_for_selector("#name")
    page.fill("#name", config["name"])
    shot(page, "new-app")
    results["newAppFits"] = fits(page)
    page.click("button:has-text('Create app')")
    page.wait_for_selector("#key")
    slug = page.inner_text("#slug")
    key = page.inner_text("#key")
    masked = page.inner_text("#secret")
    page.click("#reveal")
    secret = page.inner_text("#secret")
    results["app"] = {"slug": slug, "key": key, "masked": masked, "secretShown": secret != masked}
    results["labelsMissing"] = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
             .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
             .map(e => e.id)"""
    )
    page.click("#reveal")  # hidden again before the screenshot

    # The debug console on node A; the article's curl on node B.
    page.click("text=Debug console")
    page.wait_for_selector("#stream-status[data-live=true]")
    started = time.monotonic()
    status = trigger(B, slug, key, secret, "hello from curl")
    page.wait_for_selector("#log tr.kind-event:has-text('hello from curl')", timeout=1000)
    results["curlToConsoleMs"] = round((time.monotonic() - started) * 1000)
    results["curlStatus"] = status
    row = page.locator("#log tr.kind-event").first
    results["eventRow"] = row.inner_text()

    # A client refused: a socket in another tab joins the private channel without a token, then
    # a public one.
    other = context.new_page()
    other.goto(B + "/healthz")  # a page of node B's origin, for a same-origin socket
    opened = other.evaluate(
        """(slug) => new Promise((resolve) => {
             const ws = new WebSocket(`ws://${location.host}/socket/websocket?vsn=2.0.0`);
             ws.onopen = () => {
               ws.send(JSON.stringify(["1", "1", `private:${slug}`, "phx_join", {}]));
               ws.send(JSON.stringify(["2", "2", `public:${slug}`, "phx_join", {}]));
               resolve("open");
             };
             ws.onerror = () => resolve("error");
             setTimeout(() => resolve("timeout"), 5000);
             window.socket = ws;
           })""",
        slug,
    )
    assert opened == "open", opened
    page.wait_for_selector("#log tr.kind-refused", timeout=5000)
    results["refusedRow"] = page.locator("#log tr.kind-refused").first.inner_text()
    page.wait_for_selector("#log tr.kind-join", timeout=5000)

    # The channel filter.
    page.fill("#filter", "private")
    visible = page.evaluate("[...document.querySelectorAll('#log tr')].filter(r => !r.hidden).map(r => r.className)")
    results["filtered"] = sorted(set(visible))
    page.fill("#filter", "")

    # A test event from the console's own form.
    page.fill("#payload", '{"text": "sent from the form"}')
    page.click("button:has-text('Send event')")
    page.wait_for_selector("#log tr.kind-console_event:has-text('sent from the form')", timeout=2000)
    results["debugFits"] = fits(page)
    shot(page, "debug-console")
    other.evaluate("window.socket.close()")
    page.wait_for_selector("#log tr.kind-disconnect", timeout=5000)

    # Rotate the secret: the old one is refused at once, the new one works.
    page.goto(f"{A}/console/apps/{slug}")
    page.wait_for_selector("#rotate")
    page.click("#rotate")
    page.click("button:has-text('Yes, rotate the secret')")
    page.wait_for_selector("text=Secret rotated.")
    rotated = page.inner_text("#secret")
    results["rotation"] = {
        "changed": rotated != secret,
        "old": trigger(A, slug, key, secret, "old secret"),
        "new": trigger(A, slug, key, rotated, "new secret"),
    }
    page.wait_for_selector(".chart svg")
    page.click("#reveal")  # masked for the screenshot
    results["appFits"] = fits(page)
    shot(page, "app")

    # CSRF: the session cookie alone changes nothing.
    no_token = page.request.post(
        f"{A}/console/api/apps/{slug}/rotate_secret", headers={"content-type": "application/json"}
    )
    results["csrfMissing"] = {"status": no_token.status, "body": no_token.json()}
    wrong_token = page.request.delete(f"{A}/console/api/apps/{slug}", headers={"x-csrf-token": "0" * 64})
    results["csrfWrong"] = wrong_token.status

    # Deactivate: triggers are refused.
    page.click("#toggle")
    page.wait_for_selector(".badge.off")
    results["deactivated"] = trigger(A, slug, key, rotated, "inactive")

    # The apps list and the nodes page.
    page.goto(A + "/console")
    page.wait_for_selector(f"text={config['name']}")
    results["appsFits"] = fits(page)
    shot(page, "apps")
    page.goto(A + "/console/nodes")
    page.wait_for_selector("text=live node")
    results["nodes"] = page.locator("tbody tr").count()
    results["nodesFits"] = fits(page)
    shot(page, "nodes")

    # Delete.
    page.goto(f"{A}/console/apps/{slug}")
    page.wait_for_selector("#delete")
    page.click("#delete")
    page.click("button:has-text('Yes, delete the app')")
    page.wait_for_url(A + "/console")
    page.wait_for_selector("text=No apps yet")
    results["deleted"] = trigger(A, slug, key, rotated, "deleted")

    # Log out: the pages are gone again.
    page.click("button:has-text('Log out')")
    page.wait_for_url(A + "/console/login")
    page.goto(A + "/console")
    results["afterLogout"] = urllib.parse.urlparse(page.url).path
    browser.close()

print(json.dumps(results))
