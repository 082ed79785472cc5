-- Progressive rollouts: one row per application with a rollout, holding the
-- planner's state (hub/rollout.State as JSON). The hub's rollout engine is
-- its only writer; it reads the row back at start to resume mid-wave.

-- +goose Up

CREATE TABLE rollouts (
    application text        NOT NULL,
    state       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rollouts_pkey PRIMARY KEY (application),
    CONSTRAINT rollouts_application_fkey FOREIGN KEY (application)
        REFERENCES applications (name) ON DELETE CASCADE,
    CONSTRAINT rollouts_state_object CHECK (jsonb_typeof(state) = 'object')
);

-- +goose Down

DROP TABLE rollouts;
