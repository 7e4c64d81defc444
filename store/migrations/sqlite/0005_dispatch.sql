-- Dispatch (DESIGN §2): reports from phones, integrations and the web, and the assignments that
-- send inspectors to them. Keep semantically identical to the other backend's file.
--
-- A report's status: new (stored, waiting for the dispatcher), dispatching (offers open),
-- assigned (every slot accepted), unassigned (escalated: nobody left within the radius),
-- completed, cancelled. `needs` is how many inspectors it takes (1 or 2).
CREATE TABLE reports (
    id          TEXT PRIMARY KEY NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('device', 'integration', 'web')),
    origin      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    text        TEXT NOT NULL,
    lat         REAL NOT NULL,
    lon         REAL NOT NULL,
    ts          BIGINT NOT NULL,
    plate       TEXT,
    needs       BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('new', 'dispatching', 'assigned', 'unassigned', 'completed', 'cancelled')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX reports_status ON reports (status, created_at);
CREATE INDEX reports_created ON reports (created_at, id);

-- One offer of a report to one device and what became of it. A device is offered a report at
-- most once (unique report_id, device_id), and holds at most one open assignment at a time
-- (partial unique index), which is what makes it busy.
CREATE TABLE assignments (
    id          TEXT PRIMARY KEY NOT NULL,
    report_id   TEXT NOT NULL REFERENCES reports (id),
    device_id   TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('offered', 'accepted', 'arrived', 'completed', 'declined', 'expired', 'cancelled')),
    distance_m  REAL NOT NULL,
    offered_at  BIGINT NOT NULL,
    respond_by  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    UNIQUE (report_id, device_id)
);
CREATE UNIQUE INDEX assignments_open_device ON assignments (device_id)
    WHERE status IN ('offered', 'accepted', 'arrived');
CREATE INDEX assignments_deadline ON assignments (respond_by) WHERE status = 'offered';

-- Every transition of an assignment, with who made it: the report's timeline.
CREATE TABLE assignment_log (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    assignment_id  TEXT NOT NULL REFERENCES assignments (id),
    report_id      TEXT NOT NULL,
    status         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    note           TEXT,
    ts             BIGINT NOT NULL
);
CREATE INDEX assignment_log_report ON assignment_log (report_id, seq);
