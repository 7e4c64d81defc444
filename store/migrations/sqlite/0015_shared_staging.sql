-- Shared evidence staging (DESIGN §4, issue 17): with `[evidence] staging = "database"` a
-- chunk's bytes are kept in its `evidence_chunks` row, so any ingest process can take any chunk
-- of an upload and whichever sees it complete assembles it. NULL for chunks staged in a local
-- file (`staging = "local"`, the default). Keep semantically identical to
-- migrations/postgres/0015_shared_staging.sql.
ALTER TABLE evidence_chunks ADD COLUMN bytes BLOB;
