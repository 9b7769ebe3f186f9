"""Drives a pushlite node with the official Python `pusher` SDK (PyPI), as an app's server
would: triggers, batches, channel queries, users and terminate_connections. Prints what the
SDK returned (or raised) as JSON; the Rust test checks it and what its sockets received.

Usage: python sdk.py '{"host":…,"port":…,"appId":…,"key":…,"secret":…,"socketId":…}'
"""

import json
import sys

import pusher
from pusher.errors import PusherError


def outcome(call):
    try:
        return {"ok": call()}
    except PusherError as error:
        return {"error": type(error).__name__}


config = json.loads(sys.argv[1])
client = pusher.Pusher(
    app_id=config["appId"],
    key=config["key"],
    secret=config["secret"],
    host=config["host"],
    port=config["port"],
    ssl=False,
)
wrong = pusher.Pusher(
    app_id=config["appId"],
    key=config["key"],
    secret="not-the-secret",
    host=config["host"],
    port=config["port"],
    ssl=False,
)

results = {
    "trigger": outcome(lambda: client.trigger("py-public", "hello", {"from": "python"})),
    "multi": outcome(lambda: client.trigger(["py-public", "py-other"], "both", "plain text")),
    "excluded": outcome(
        lambda: client.trigger("py-public", "not-for-you", {}, socket_id=config["socketId"])
    ),
    "batch": outcome(
        lambda: client.trigger_batch(
            [
                {"channel": "py-public", "name": "b1", "data": {"i": 1}},
                {"channel": "py-other", "name": "b2", "data": {"i": 2}},
            ]
        )
    ),
    "channels": outcome(lambda: client.channels_info(attributes=["subscription_count"])),
    "prefixed": outcome(lambda: client.channels_info(prefix_filter="py-o")),
    "channel": outcome(lambda: client.channel_info("py-public", ["subscription_count"])),
    "users": outcome(lambda: client.users_info("py-public")),
    "badAuth": outcome(lambda: wrong.trigger("py-public", "x", {})),
    "tooBig": outcome(lambda: client.trigger("py-public", "x", "y" * (10 * 1024 + 1))),
    "sendToUser": outcome(lambda: client.send_to_user("py-user", "notice", {"hi": 1})),
    "terminate": outcome(lambda: client.terminate_user_connections("py-user")),
}
print(json.dumps(results))
