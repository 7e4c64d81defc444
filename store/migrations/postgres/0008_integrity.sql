-- Integrity index per township and department (issue 11). Keep semantically identical to the
-- other backend's file. Nothing here is updated in place except an alert's rectification case:
-- a formula is a new version row, an indicator import adds rows (the newest per unit, period and
-- key counts), and every computation adds index rows, so history is kept and any past colour can
-- be explained from the inputs and formula version stored with it.

-- Formula versions (the TOML text); immutable, the newest is in force.
CREATE TABLE integrity_formulas (
    version    BIGSERIAL PRIMARY KEY,
    source     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    loaded_at  BIGINT NOT NULL,
    loaded_by  TEXT NOT NULL
);

-- Indicators the platform does not see itself (education sessions, attendance, organisation
-- checks), imported from CSV or entered through the API.
CREATE TABLE integrity_indicators (
    id          BIGSERIAL PRIMARY KEY,
    unit        TEXT NOT NULL,
    period      TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    source      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    ts          BIGINT NOT NULL
);
CREATE INDEX integrity_indicators_period ON integrity_indicators (period, unit, key, id);

-- One computed index of one unit for one period. `inputs` (JSON) holds every raw input, the
-- underlying record ids and each term's value and points; `explanation` is the sentence.
CREATE TABLE integrity_index (
    id               BIGSERIAL PRIMARY KEY,
    run_id           TEXT NOT NULL,
    unit             TEXT NOT NULL,
    unit_name        TEXT NOT NULL,
    period           TEXT NOT NULL,
    formula_version  BIGINT NOT NULL REFERENCES integrity_formulas (version),
    size             BIGINT NOT NULL,
    size_source      TEXT NOT NULL CHECK (size_source IN ('registry', 'default')),
    score            DOUBLE PRECISION NOT NULL,
    colour           TEXT NOT NULL CHECK (colour IN ('green', 'blue', 'yellow', 'orange', 'red')),
    inputs           TEXT NOT NULL,
    explanation      TEXT NOT NULL,
    computed_at      BIGINT NOT NULL
);
CREATE INDEX integrity_index_period ON integrity_index (period, unit, id);
CREATE INDEX integrity_index_unit ON integrity_index (unit, id);

-- Warnings (yellow or orange) and alarms (red): at most one of each per unit and period, which
-- is what makes a crossing notify exactly once however often the index is recomputed.
CREATE TABLE integrity_alerts (
    id        BIGSERIAL PRIMARY KEY,
    unit      TEXT NOT NULL,
    period    TEXT NOT NULL,
    level     TEXT NOT NULL CHECK (level IN ('warning', 'alarm')),
    index_id  BIGINT NOT NULL REFERENCES integrity_index (id),
    case_id   TEXT,
    ts        BIGINT NOT NULL,
    UNIQUE (unit, period, level)
);

-- Circulation notices (通报) issued on a period's results.
CREATE TABLE integrity_notices (
    id          BIGSERIAL PRIMARY KEY,
    period      TEXT NOT NULL,
    units       TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    issued_by   TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    ledger_seq  BIGINT NOT NULL
);
CREATE INDEX integrity_notices_period ON integrity_notices (period, id);
