-- The history in time order (issue 16, DESIGN §3): the key becomes (ts, device_id) instead of
-- (device_id, ts). Phones send points near the present, so the key's index grows at its end
-- instead of at one leaf page per phone, and a commit of thousands of phones' points dirties a
-- handful of index pages instead of one per point. A device's track is read as a scan of the
-- time window the desk asks for. Uniqueness is the same pair, so a re-sent point is still
-- stored once. Keep semantically identical to the other backend's file.
ALTER TABLE position_history DROP CONSTRAINT position_history_pkey, ADD PRIMARY KEY (ts, device_id);
