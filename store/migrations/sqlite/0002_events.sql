-- Event outbox (DESIGN §3): every event is written here first, in the same transaction as the
-- change it describes; a relay publishes it on jd/v1/events/{kind} (QoS 1) and marks it.
-- `seq` orders events for Server-Sent Events resume (Last-Event-ID); `id` lets consumers
-- de-duplicate at-least-once deliveries. Keep semantically identical to the PostgreSQL file.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    type         TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    data         TEXT NOT NULL,
    published_at BIGINT
);
CREATE INDEX events_unpublished ON events (seq) WHERE published_at IS NULL;
