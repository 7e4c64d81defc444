-- Registries (members, staff, vehicles, departments) and the look-up audit (issue 7).
-- Keep semantically identical to migrations/postgres/0006_registries.sql.
--
-- Every registry row is a version: an import closes the rows it changes or retires
-- (`valid_to`, `version_to`) and inserts the new ones (`valid_from`, `version_from`); nothing is
-- deleted, so "who was the registered driver of this car on 3 May" is
-- `valid_from <= t AND (valid_to IS NULL OR valid_to > t)`. Times are Unix epoch milliseconds.

CREATE TABLE registry_imports (
    version      INTEGER PRIMARY KEY AUTOINCREMENT,
    registry     TEXT NOT NULL CHECK (registry IN ('members', 'staff', 'vehicles', 'departments')),
    imported_at  BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    source       TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    records      BIGINT NOT NULL,
    added        BIGINT NOT NULL,
    changed      BIGINT NOT NULL,
    retired      BIGINT NOT NULL,
    ledger_seq   BIGINT NOT NULL
);
CREATE INDEX registry_imports_registry ON registry_imports (registry, version);

-- Party members (registry 'members') and public-institution staff (registry 'staff').
-- `id_number` is stored in full and only ever shown masked outside an admin path.
CREATE TABLE registry_persons (
    row_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    registry      TEXT NOT NULL CHECK (registry IN ('members', 'staff')),
    code          TEXT NOT NULL,
    name          TEXT NOT NULL,
    id_number     TEXT NOT NULL,
    unit          TEXT NOT NULL,
    post          TEXT NOT NULL,
    rank          TEXT NOT NULL,
    party_member  BIGINT NOT NULL CHECK (party_member IN (0, 1)),
    status        TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    valid_from    BIGINT NOT NULL,
    valid_to      BIGINT,
    version_from  BIGINT NOT NULL,
    version_to    BIGINT
);
CREATE INDEX registry_persons_key ON registry_persons (registry, code, valid_from);
CREATE INDEX registry_persons_name ON registry_persons (name, valid_from);

-- Official vehicles, keyed by the normalised plate (e.g. 鲁G12345, 鲁GD12345).
CREATE TABLE registry_vehicles (
    row_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    plate         TEXT NOT NULL,
    unit          TEXT NOT NULL,
    vehicle_type  TEXT NOT NULL,
    use_category  TEXT NOT NULL,
    driver        TEXT NOT NULL,
    status        TEXT NOT NULL,
    allowed       BIGINT NOT NULL CHECK (allowed IN (0, 1)),
    content_hash  TEXT NOT NULL,
    valid_from    BIGINT NOT NULL,
    valid_to      BIGINT,
    version_from  BIGINT NOT NULL,
    version_to    BIGINT
);
CREATE INDEX registry_vehicles_plate ON registry_vehicles (plate, valid_from);

-- Departments with their power list and responsibility list (JSON arrays of strings).
CREATE TABLE registry_departments (
    row_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    code              TEXT NOT NULL,
    name              TEXT NOT NULL,
    powers            TEXT NOT NULL,
    responsibilities  TEXT NOT NULL,
    content_hash      TEXT NOT NULL,
    valid_from        BIGINT NOT NULL,
    valid_to          BIGINT,
    version_from      BIGINT NOT NULL,
    version_to        BIGINT
);
CREATE INDEX registry_departments_code ON registry_departments (code, valid_from);

-- Every look-up (who, device, where, query, result). Rows are written in batches; each batch
-- is committed to the ledger by hash (`ledger_seq`), see DESIGN §4. Positions are integer
-- micro-degrees so the batch hash holds integers and strings only.
CREATE TABLE lookup_audit (
    id          BIGINT PRIMARY KEY NOT NULL,
    ts          BIGINT NOT NULL,
    channel     TEXT NOT NULL CHECK (channel IN ('mqtt', 'rest')),
    actor       TEXT NOT NULL,
    device      TEXT,
    lat_e6      BIGINT,
    lon_e6      BIGINT,
    kind        TEXT NOT NULL,
    q           TEXT NOT NULL,
    at          BIGINT,
    outcome     TEXT NOT NULL,
    result      TEXT,
    candidates  BIGINT NOT NULL,
    ledger_seq  BIGINT NOT NULL
);
CREATE INDEX lookup_audit_device ON lookup_audit (device, id);

-- The last audit id handed out; bumping it first serialises batch writers (like ledger_head).
CREATE TABLE lookup_audit_head (
    id       BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    last_id  BIGINT NOT NULL
);
INSERT INTO lookup_audit_head (id, last_id) VALUES (1, 0);
