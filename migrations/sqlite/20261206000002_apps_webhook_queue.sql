-- An app's share of the webhook queue: NULL follows webhooks.max_queue_per_app, 0 is no cap of
-- its own (only webhooks.max_queue applies).
ALTER TABLE apps ADD COLUMN webhook_max_queue INTEGER;
