-- The hub replicas sharing this database, one row per replica name. A
-- replica claims its name at start and heartbeats while it runs, so two
-- live processes never run under one name (job ownership and agent streams
-- are recorded by replica name), and operators can see which replicas run
-- and where. Rows stay after a replica stops (stopped_at is set): they show
-- when it last ran.

-- +goose Up

CREATE TABLE hub_replicas (
    name         text        NOT NULL,
    -- A random id of the running process: a row of another instance whose
    -- heartbeat is fresh means the name is taken.
    instance     text        NOT NULL,
    -- A stable id kept in the replica's data directory: the same replica
    -- started again after a crash takes its row over at once, without
    -- waiting for its old heartbeat to go stale. '' when there is none.
    node_id      text        NOT NULL DEFAULT '',
    agent_addr   text        NOT NULL DEFAULT '',
    http_addr    text        NOT NULL DEFAULT '',
    -- HOST:PORT of the replica's gossip (memberlist); '' without gossip.
    peer_addr    text        NOT NULL DEFAULT '',
    version      text        NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz,
    CONSTRAINT hub_replicas_pkey PRIMARY KEY (name)
);

-- +goose Down

DROP TABLE hub_replicas;
