-- Products, in the subset of SQL that SQLite and PostgreSQL share, so one migration serves both.
-- Instants are microseconds since the Unix epoch (sqlx's Any driver has no timestamp type).
CREATE TABLE products (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    price_cents   BIGINT NOT NULL CHECK (price_cents >= 0),
    currency      TEXT NOT NULL,
    stock         BIGINT NOT NULL CHECK (stock >= 0),
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    revision      BIGINT NOT NULL
);

-- Listing pages walk this index: oldest first, id breaking ties.
CREATE INDEX products_by_creation ON products (created_at_us, id);

-- Which seed sets were applied, so a demo catalogue is added once and never again.
CREATE TABLE product_seeds (
    name          TEXT PRIMARY KEY,
    applied_at_us BIGINT NOT NULL
);
