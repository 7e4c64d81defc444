-- Disciplinary cases (issue 10): case records, their stage timeline, approvals, deadline timers
-- and negative records, plus the data files the workflow runs on (working-day calendars, stage
-- templates). Keep semantically identical to the other backend's file. Nothing here is deleted:
-- a re-loaded calendar or template is a new version row, the newest wins.

-- One official calendar per year as loaded (TOML text); the newest row of a year is in force.
CREATE TABLE calendar_years (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    year       BIGINT NOT NULL,
    source     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    loaded_at  BIGINT NOT NULL,
    loaded_by  TEXT NOT NULL
);
CREATE INDEX calendar_years_year ON calendar_years (year, seq);

-- Stage templates as loaded (TOML text); the newest is used for new cases.
CREATE TABLE case_templates (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    source     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    loaded_at  BIGINT NOT NULL,
    loaded_by  TEXT NOT NULL
);

-- A case. `template` is the stage list (JSON) the case was opened under, so a later template
-- change never alters the rules of a running case. `deadline_at` is the current stage's deadline
-- (Unix ms, the last millisecond of the deadline day in UTC+8).
CREATE TABLE cases (
    id                TEXT PRIMARY KEY NOT NULL,
    title             TEXT NOT NULL,
    origin_kind       TEXT NOT NULL CHECK (origin_kind IN ('report', 'lookup', 'evidence', 'manual')),
    origin_id         TEXT,
    parties           TEXT NOT NULL,
    evidence          TEXT NOT NULL,
    handler           TEXT NOT NULL,
    unit              TEXT NOT NULL,
    unit_head         TEXT,
    template          TEXT NOT NULL,
    stage_index       BIGINT NOT NULL,
    stage             TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    stage_started_at  BIGINT NOT NULL,
    deadline_at       BIGINT NOT NULL,
    extensions        BIGINT NOT NULL,
    submitted_by      TEXT,
    submitted_at      BIGINT,
    overdue_at        BIGINT,
    created_by        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX cases_created ON cases (created_at, id);
CREATE INDEX cases_unit ON cases (unit, status);

-- Everything that happened to a case, in order: its timeline.
CREATE TABLE case_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id      TEXT NOT NULL REFERENCES cases (id),
    stage_index  BIGINT NOT NULL,
    stage        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    actor        TEXT NOT NULL,
    note         TEXT,
    data         TEXT NOT NULL,
    ts           BIGINT NOT NULL
);
CREATE INDEX case_log_case ON case_log (case_id, seq);

-- Approvals to move a case on from a stage; one per approver and stage (the two-person rule
-- counts distinct rows).
CREATE TABLE case_approvals (
    case_id      TEXT NOT NULL REFERENCES cases (id),
    stage_index  BIGINT NOT NULL,
    approver     TEXT NOT NULL,
    note         TEXT,
    ts           BIGINT NOT NULL,
    PRIMARY KEY (case_id, stage_index, approver)
);

-- Deadline timers, scheduled from the database. A timer fires when its row goes from pending to
-- fired (one UPDATE … WHERE state = 'pending'), which is what makes it fire exactly once across
-- restarts and competing schedulers.
CREATE TABLE case_timers (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id       TEXT NOT NULL REFERENCES cases (id),
    stage_index   BIGINT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('reminder', 'overdue')),
    working_days  BIGINT NOT NULL,
    due_at        BIGINT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'fired', 'cancelled')),
    fired_at      BIGINT
);
CREATE INDEX case_timers_due ON case_timers (state, due_at);
CREATE INDEX case_timers_case ON case_timers (case_id, id);

-- Negative records (负面记录) against a unit or a handler for a missed deadline.
CREATE TABLE negative_records (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id       TEXT NOT NULL REFERENCES cases (id),
    stage         TEXT NOT NULL,
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('unit', 'handler')),
    subject       TEXT NOT NULL,
    reason        TEXT NOT NULL,
    deadline_at   BIGINT NOT NULL,
    ts            BIGINT NOT NULL
);
CREATE INDEX negative_records_subject ON negative_records (subject_kind, subject, id);
