-- Evidence (DESIGN §3, §4): uploads being assembled, stored evidence records, the platform's
-- receipt-signing keys, and an index to read one item's chain of custody from the ledger.
-- Keep semantically identical to migrations/sqlite/0004_evidence.sql. Times are epoch ms.

-- An upload in progress: the phone's `meta`, where its chunks are staged on disk, and when it
-- was last touched. `evid` is unique across devices (a second device may not reuse it).
CREATE TABLE evidence_uploads (
    evid         TEXT PRIMARY KEY NOT NULL,
    device       TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    mime         TEXT NOT NULL,
    captured_at  BIGINT NOT NULL,
    lat          DOUBLE PRECISION,
    lon          DOUBLE PRECISION,
    report_id    TEXT,
    chunk_size   BIGINT NOT NULL,
    chunks       BIGINT NOT NULL,
    staging      TEXT NOT NULL,
    opened_at    BIGINT NOT NULL,
    touched_at   BIGINT NOT NULL
);
CREATE INDEX evidence_uploads_device ON evidence_uploads (device);

-- Chunks durably staged (written and synced) for an open upload; one row per chunk index.
CREATE TABLE evidence_chunks (
    evid  TEXT NOT NULL REFERENCES evidence_uploads (evid) ON DELETE CASCADE,
    n     BIGINT NOT NULL,
    PRIMARY KEY (evid, n)
);

-- A stored item: its blob is at evidence/{sha256[0..2]}/{sha256} in the object store (shared by
-- every item with the same bytes); `ledger_seq`/`ledger_hash` and `sig` make up its receipt.
CREATE TABLE evidence (
    evid         TEXT PRIMARY KEY NOT NULL,
    device       TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    mime         TEXT NOT NULL,
    captured_at  BIGINT NOT NULL,
    lat          DOUBLE PRECISION,
    lon          DOUBLE PRECISION,
    report_id    TEXT,
    received_at  BIGINT NOT NULL,
    ledger_seq   BIGINT NOT NULL,
    ledger_hash  TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    sig          TEXT NOT NULL
);
CREATE INDEX evidence_device ON evidence (device, received_at);
CREATE INDEX evidence_report ON evidence (report_id, received_at);
CREATE INDEX evidence_sha256 ON evidence (sha256);

-- Public halves of the Ed25519 keys that signed receipts (the private key stays in the data
-- dir); the newest is the current one, published on jd/v1/platform/key.
CREATE TABLE platform_keys (
    key_id      TEXT PRIMARY KEY NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Chain of custody: every ledger entry about one item, in order.
CREATE INDEX ledger_subject ON ledger (subject, seq);
