-- The app's webhooks (issue 13): a JSON list of {"url", "events"}.
ALTER TABLE apps ADD COLUMN webhooks TEXT NOT NULL DEFAULT '[]';
