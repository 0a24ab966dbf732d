-- Refresh-token families, refresh tokens (as SHA-256 hashes only) and the ids of issued access
-- tokens, in the subset of SQL that SQLite and PostgreSQL share, so one migration serves both.
-- Instants are microseconds since the Unix epoch (sqlx's Any driver has no timestamp type).

-- One family per login: every token its rotations produce belongs to it, and ending the family
-- (logout, or a refresh token presented twice) ends them all.
CREATE TABLE token_families (
    id            TEXT PRIMARY KEY,
    subject       TEXT NOT NULL,
    -- The roles held at login, as a JSON array: every token of the family carries them.
    roles         TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    revoked_at_us BIGINT
);

-- Refresh tokens, by the lower-case hex SHA-256 of the token; the token itself is never stored.
CREATE TABLE refresh_tokens (
    hash          TEXT PRIMARY KEY,
    family_id     TEXT NOT NULL REFERENCES token_families (id),
    issued_at_us  BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL,
    -- Set once, by the conditional UPDATE that exchanges the token; a second use is a reuse.
    used_at_us    BIGINT
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at_us);

-- The id (jti) of every access token issued, so ValidateToken can refuse those of an ended family.
CREATE TABLE access_tokens (
    jti           TEXT PRIMARY KEY,
    family_id     TEXT NOT NULL REFERENCES token_families (id),
    expires_at_us BIGINT NOT NULL
);
CREATE INDEX access_tokens_by_family ON access_tokens (family_id);
CREATE INDEX access_tokens_by_expiry ON access_tokens (expires_at_us);
