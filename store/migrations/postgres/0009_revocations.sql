-- Revocation propagation (issue 15). Keep semantically identical to the other backend's file.
-- The broker and the roles ask every second which devices and accounts were revoked since they
-- last looked (`Store::revoked_since`); these indexes keep that a range scan of a few rows.
CREATE INDEX devices_revoked_at ON devices (revoked_at);
CREATE INDEX accounts_revoked_at ON accounts (revoked_at);
