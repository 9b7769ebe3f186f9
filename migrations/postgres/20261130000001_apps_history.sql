-- Channel history (issue 14): events kept per channel (0 = none) and how long they outlive the
-- latest one.
ALTER TABLE apps ADD COLUMN history_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE apps ADD COLUMN history_ttl_secs INTEGER NOT NULL DEFAULT 3600;
