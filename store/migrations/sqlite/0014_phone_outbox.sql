-- Phone outbox (DESIGN §3): messages a phone must not miss (assignment offers, withdrawal and
-- expiry notices) are written here in the same transaction as the change they announce; the
-- outbox relay publishes each on jd/v1/dev/{device}/inbox/{kind} (QoS 1), in `seq` order, and
-- marks it after the broker's PUBACK. Published rows are pruned after a day. Every serve process
-- runs a relay: a relay claims the rows it is about to publish for a few seconds
-- (`claimed_until`), so two processes sharing the database do not both send an offer; a claim
-- that lapses (its relay died or lost the broker) is taken over.
-- Keep semantically identical to the PostgreSQL file.
CREATE TABLE phone_messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    device       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT,
    claimed_until BIGINT
);
CREATE INDEX phone_messages_unpublished ON phone_messages (seq) WHERE published_at IS NULL;
CREATE INDEX phone_messages_published ON phone_messages (published_at) WHERE published_at IS NOT NULL;
