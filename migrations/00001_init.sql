-- The first migration holds no schema on purpose: it proves the migration
-- runner end to end (goose's version table, locking, embedding) before the
-- hub's store adds its tables in the migrations that follow.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
