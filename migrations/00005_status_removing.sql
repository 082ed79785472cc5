-- A status of an application that has left the cluster's assignment (a
-- relabel, a placement change, the application deleted) is kept, marked
-- removing, until the cluster's agent confirms it removed the application:
-- the hub shows it as being removed and counts it nowhere meanwhile. The
-- hub's control logic sets and clears the mark from the assignments it
-- computes; the row is deleted on the agent's word.

-- +goose Up

ALTER TABLE app_status ADD COLUMN removing boolean NOT NULL DEFAULT false;

-- +goose Down

ALTER TABLE app_status DROP COLUMN removing;
