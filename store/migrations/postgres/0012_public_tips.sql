-- Public tips (issue 19, DESIGN §4): citizens report without an account; each submission gets a
-- follow-up code and a secret (kept as its SHA-256), a report of source `public`, and the office
-- answers with feedback. Keep semantically identical to the other backend's file.
ALTER TABLE reports DROP CONSTRAINT reports_source_check;
ALTER TABLE reports ADD CONSTRAINT reports_source_check
    CHECK (source IN ('device', 'integration', 'web', 'public'));

-- One row per public report: how many submissions were folded into it (same text and place
-- within the folding window) and the key they were folded by.
CREATE TABLE public_reports (
    report_id   TEXT PRIMARY KEY NOT NULL REFERENCES reports (id),
    place       TEXT,
    fold_key    TEXT NOT NULL,
    count       BIGINT NOT NULL,
    first_at    BIGINT NOT NULL,
    last_at     BIGINT NOT NULL
);
CREATE INDEX public_reports_fold ON public_reports (fold_key, last_at);

-- One row per submission: its follow-up code, the SHA-256 of its secret, and the reporter's
-- contact (never for an anonymous tip).
CREATE TABLE public_tips (
    code           TEXT PRIMARY KEY NOT NULL,
    report_id      TEXT NOT NULL REFERENCES reports (id),
    secret_sha256  TEXT NOT NULL,
    contact        TEXT,
    anonymous      BIGINT NOT NULL,
    photos         BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX public_tips_report ON public_tips (report_id);

-- What the office tells the reporters of a report (every code of it sees every line).
CREATE TABLE report_feedback (
    id          TEXT PRIMARY KEY NOT NULL,
    report_id   TEXT NOT NULL REFERENCES reports (id),
    text        TEXT NOT NULL,
    author      TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    ledger_seq  BIGINT NOT NULL
);
CREATE INDEX report_feedback_report ON report_feedback (report_id, ts);
