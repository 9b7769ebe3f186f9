-- Per-app quotas (issue 16): connections across the cluster and HTTP triggers per second.
-- NULL follows the node's global limit; 0 means none.
ALTER TABLE apps ADD COLUMN max_connections INTEGER;
ALTER TABLE apps ADD COLUMN max_triggers_per_sec INTEGER;
