CREATE TABLE apps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    slug TEXT NOT NULL,
    key TEXT NOT NULL,
    secret TEXT NOT NULL,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    -- a JSON array of origins
    allowed_origins TEXT NOT NULL DEFAULT '[]',
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX apps_name_index ON apps (name);
CREATE UNIQUE INDEX apps_slug_index ON apps (slug);
CREATE UNIQUE INDEX apps_key_index ON apps (key);
