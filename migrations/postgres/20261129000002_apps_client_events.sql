-- Whether sockets may push client events to the app's topics (issue 10, D7).
ALTER TABLE apps ADD COLUMN client_events BOOLEAN NOT NULL DEFAULT TRUE;
