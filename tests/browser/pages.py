"""The app's web server of the browser tests: static pages and the clients' scripts from
tests/js/node_modules, and optionally a POST handler (an auth endpoint). Serves on a free
loopback port in a background thread."""

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parent / "js" / "node_modules"
VENDOR = {
    "/vendor/pusher.min.js": (NODE_MODULES / "pusher-js/dist/web/pusher.min.js", "text/javascript"),
    "/vendor/phoenix.min.js": (NODE_MODULES / "phoenix/priv/static/phoenix.min.js", "text/javascript"),
}


def start(pages, on_post=None):
    """Serves `pages` (names of HTML files next to this one) and the vendored scripts; `on_post`
    takes the decoded form of a POST and returns (status, JSON bytes). Returns (origin, server)."""
    files = dict(VENDOR)
    for page in pages:
        files[f"/{page}"] = (HERE / page, "text/html")

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body, kind):
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path, kind = files.get(urllib.parse.urlparse(self.path).path, (None, None))
            if path is None:
                return self.reply(404, b"not found", "text/plain")
            self.reply(200, path.read_bytes(), kind)

        def do_POST(self):
            if on_post is None:
                return self.reply(404, b"not found", "text/plain")
            length = int(self.headers.get("content-length", 0))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            status, body = on_post(form)
            self.reply(status, body, "application/json")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server
