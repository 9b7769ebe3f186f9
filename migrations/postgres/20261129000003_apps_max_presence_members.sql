-- Users at most in one presence channel of the app (issue 12); Pusher's limit is 100.
ALTER TABLE apps ADD COLUMN max_presence_members INTEGER NOT NULL DEFAULT 100;
