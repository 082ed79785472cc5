-- The assignment version a cluster last rejected (NACKed) and when, so the
-- rollout engine can fail a cluster whose agent refuses the release at once
-- instead of after the progress deadline. Both are cleared by the next ACK.

-- +goose Up

ALTER TABLE clusters
    ADD COLUMN nacked_version text NOT NULL DEFAULT '',
    ADD COLUMN nacked_at      timestamptz;

-- +goose Down

ALTER TABLE clusters
    DROP COLUMN nacked_at,
    DROP COLUMN nacked_version;
