-- Positions (DESIGN §4): the live picture (one row per device) and the append-only history.
-- Times are Unix epoch milliseconds; coordinates WGS-84 degrees; speeds m/s.
-- Keep semantically identical to the other backend's file.

-- Latest known state of each device. Position columns follow the newest heartbeat by its own
-- timestamp (a late backlog never moves them backwards); last_seen is when any heartbeat last
-- arrived; online/presence_ts follow the presence topic (last will); stale is set when an online
-- device has been silent longer than the configured time.
CREATE TABLE device_position (
    device_id    TEXT PRIMARY KEY NOT NULL,
    ts           BIGINT,
    lat          REAL,
    lon          REAL,
    acc          REAL,
    spd          REAL,
    hdg          REAL,
    alt          REAL,
    bat          REAL,
    duty         TEXT,
    last_seen    BIGINT,
    online       BIGINT NOT NULL DEFAULT 0,
    presence_ts  BIGINT,
    stale        BIGINT NOT NULL DEFAULT 0
);

-- Every stored point once: the key makes re-sent points (after a lost ack) idempotent.
CREATE TABLE position_history (
    device_id    TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    lat          REAL NOT NULL,
    lon          REAL NOT NULL,
    acc          REAL,
    spd          REAL,
    hdg          REAL,
    alt          REAL,
    bat          REAL,
    duty         TEXT,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (device_id, ts)
) WITHOUT ROWID;
