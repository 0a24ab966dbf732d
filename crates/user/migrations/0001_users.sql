-- Accounts, in the subset of SQL that SQLite and PostgreSQL share, so one migration serves both.
-- Instants are microseconds since the Unix epoch (sqlx's Any driver has no timestamp type).
-- `email` is the normalised address (trimmed, domain lower-cased): the unit of uniqueness.
-- `password_hash` is an argon2id PHC string, parameters and salt included; never the password.
-- `roles` is a sorted, comma-separated set of lower-case words, such as `admin,user`.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    CONSTRAINT users_email_unique UNIQUE (email)
);

-- Listing pages walk this index: oldest first, id breaking ties.
CREATE INDEX users_by_creation ON users (created_at_us, id);
