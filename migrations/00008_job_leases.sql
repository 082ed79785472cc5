-- Background work shared by hub replicas. Every job (an application's
-- rollout, a repository's Git polling, event retention) is run by one
-- replica at a time: membership (hashicorp/memberlist) says which replica
-- should hold it, and a row here says which one does. A lease is
-- held until expires_at (the database's clock) and renewed by its holder
-- well before; epoch grows by one each time the lease changes hands, and
-- every write of a job's results checks, in its own transaction, that the
-- writer still holds the lease at the epoch it acquired. A replica cut
-- off from the others by a gossip partition, or paused past its lease,
-- therefore writes nothing for a job it has lost.
--
-- rollouts.version is drawn from one sequence at every write of a rollout
-- state: a write names the version it read, so an operator's command taken
-- by any replica and the owner's next step never overwrite each other
-- unseen, and a replica reloading a state keeps the newer of what it has
-- and what it reads (a sequence, not a per-row count, so that a state
-- deleted and made again still counts up).
--
-- events.replica is the hub replica that recorded each event: a hub's
-- connections carry application_name "drover-hub:NAME", which the
-- column's default reads, so every writer of events records it.
--
-- Events older than the hub's retention are deleted by the replica that
-- holds the "retention" job, under its lease.

-- +goose Up

CREATE TABLE job_leases (
    job         text        NOT NULL,
    replica     text        NOT NULL,
    instance    text        NOT NULL,
    epoch       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    CONSTRAINT job_leases_pkey PRIMARY KEY (job)
);

CREATE SEQUENCE rollout_versions;

ALTER TABLE rollouts
    ADD COLUMN version bigint NOT NULL DEFAULT nextval('rollout_versions');

ALTER TABLE events
    ADD COLUMN replica text NOT NULL DEFAULT
        CASE WHEN current_setting('application_name') LIKE 'drover-hub:%'
             THEN substr(current_setting('application_name'), length('drover-hub:') + 1)
             ELSE '' END;

-- The last error resolving each application's source: the replica that
-- polls its repository records it, and every replica shows it.
ALTER TABLE applications
    ADD COLUMN source_error text NOT NULL DEFAULT '';

-- Event retention deletes by age.
CREATE INDEX events_time_idx ON events (time);

-- +goose Down

DROP INDEX events_time_idx;

ALTER TABLE applications
    DROP COLUMN source_error;

ALTER TABLE events
    DROP COLUMN replica;

ALTER TABLE rollouts
    DROP COLUMN version;

DROP SEQUENCE rollout_versions;

DROP TABLE job_leases;
