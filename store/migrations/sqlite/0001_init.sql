-- Initial schema: devices, operator users, MQTT accounts and the evidence ledger.
-- Keep semantically identical to migrations/postgres/0001_init.sql.
-- Times are Unix epoch milliseconds.

CREATE TABLE devices (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    staff_id    TEXT,
    token_hash  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('dispatcher', 'leader', 'admin', 'auditor')),
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT
);

CREATE TABLE accounts (
    name        TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('integration', 'service')),
    token_hash  TEXT NOT NULL,
    subscribe   TEXT NOT NULL,
    publish     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- INTEGER PRIMARY KEY is SQLite's spelling of a 64-bit key (a rowid alias).
CREATE TABLE ledger (
    seq        INTEGER PRIMARY KEY NOT NULL,
    ts         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

CREATE TABLE ledger_head (
    id    BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);

INSERT INTO ledger_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
