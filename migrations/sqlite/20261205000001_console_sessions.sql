-- Web console logins (issue 15): the SHA-256 of each session's token, never the token, and its
-- expiry in Unix seconds. Expired rows are deleted at the next login.
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
