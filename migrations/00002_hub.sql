-- The hub's tables: the fleet (clusters and the tokens that register them),
-- what to deploy (applications, releases, repository credentials), what runs
-- (per cluster and application status), the event history, admin API tokens
-- and hub-level settings. All access goes through hub/store.
--
-- Conventions: optional text is '' rather than NULL (the proto types have no
-- NULL strings); timestamps are timestamptz; proto messages stored whole are
-- protojson in jsonb; every constraint is named so errors and later
-- migrations can refer to it.

-- +goose Up

CREATE TABLE clusters (
    name               text        NOT NULL,
    labels             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- droverv1.ClusterFacts as protojson; NULL until the agent first connects.
    facts              jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_seen          timestamptz,
    connected_since    timestamptz,
    hub_replica        text        NOT NULL DEFAULT '',
    peer_address       text        NOT NULL DEFAULT '',
    -- Serial of the cluster's current client certificate; a certificate
    -- with any other serial is refused.
    cert_serial        text        NOT NULL,
    revoked            boolean     NOT NULL DEFAULT false,
    -- The assignment version the hub wants the cluster to run.
    assignment_version text        NOT NULL DEFAULT '',
    acked_version      text        NOT NULL DEFAULT '',
    acked_at           timestamptz,
    nack_error         text        NOT NULL DEFAULT '',
    CONSTRAINT clusters_pkey PRIMARY KEY (name),
    CONSTRAINT clusters_labels_object CHECK (jsonb_typeof(labels) = 'object')
);
-- jsonb_ops (not jsonb_path_ops): label selectors need both @> (key=value)
-- and ? (key exists).
CREATE INDEX clusters_labels_idx ON clusters USING gin (labels);

CREATE TABLE join_tokens (
    id           text        NOT NULL,
    -- SHA-256 of the token's secret part; the secret itself is never stored.
    secret_hash  bytea       NOT NULL,
    reusable     boolean     NOT NULL DEFAULT false,
    -- Labels every cluster registered with the token starts with.
    labels       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    description  text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    use_count    integer     NOT NULL DEFAULT 0,
    created_by   text        NOT NULL DEFAULT '',
    last_used_at timestamptz,
    CONSTRAINT join_tokens_pkey PRIMARY KEY (id),
    CONSTRAINT join_tokens_secret_hash_len CHECK (octet_length(secret_hash) = 32),
    CONSTRAINT join_tokens_labels_object CHECK (jsonb_typeof(labels) = 'object'),
    CONSTRAINT join_tokens_use_count_nonnegative CHECK (use_count >= 0)
);

CREATE TABLE api_tokens (
    id           text        NOT NULL,
    -- The token's name is the actor recorded in the audit log, so it is
    -- unique.
    name         text        NOT NULL,
    role         text        NOT NULL,
    secret_hash  bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    -- NULL: the token never expires.
    expires_at   timestamptz,
    last_used_at timestamptz,
    CONSTRAINT api_tokens_pkey PRIMARY KEY (id),
    CONSTRAINT api_tokens_name_key UNIQUE (name),
    CONSTRAINT api_tokens_role_check CHECK (role IN ('admin', 'viewer')),
    CONSTRAINT api_tokens_secret_hash_len CHECK (octet_length(secret_hash) = 32)
);

CREATE TABLE repositories (
    url                text        NOT NULL,
    auth_type          text        NOT NULL,
    username           text        NOT NULL DEFAULT '',
    -- Credentials sealed by hub/secrets; opaque to the store.
    sealed_credentials bytea       NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT repositories_pkey PRIMARY KEY (url),
    CONSTRAINT repositories_auth_type_check CHECK (auth_type IN ('basic', 'ssh'))
);

CREATE TABLE applications (
    name       text        NOT NULL,
    -- droverv1.ApplicationSpec as protojson.
    spec       jsonb       NOT NULL,
    generation bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    CONSTRAINT applications_pkey PRIMARY KEY (name),
    CONSTRAINT applications_generation_positive CHECK (generation > 0)
);

CREATE TABLE releases (
    id          bigserial   NOT NULL,
    application text        NOT NULL,
    commit      text        NOT NULL,
    ref         text        NOT NULL DEFAULT '',
    noop        boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    CONSTRAINT releases_pkey PRIMARY KEY (id),
    CONSTRAINT releases_application_fkey FOREIGN KEY (application)
        REFERENCES applications (name) ON DELETE CASCADE,
    CONSTRAINT releases_application_commit_key UNIQUE (application, commit)
);
-- An application's current release is its row with the highest id: newest
-- first per application, and DISTINCT ON (application) for all of them.
CREATE INDEX releases_application_id_idx ON releases (application, id DESC);

-- Per (cluster, application) status as the agent last reported it.
-- application is deliberately not a foreign key: statuses of an application
-- being deleted may still arrive, and the hub filters them on read.
CREATE TABLE app_status (
    cluster     text        NOT NULL,
    application text        NOT NULL,
    commit      text        NOT NULL DEFAULT '',
    -- droverv1.SyncState and droverv1.Health numbers.
    sync        smallint    NOT NULL DEFAULT 0,
    health      smallint    NOT NULL DEFAULT 0,
    message     text        NOT NULL DEFAULT '',
    -- JSON array of droverv1.ResourceStatus as protojson.
    resources   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    observed_at timestamptz,
    updated_at  timestamptz NOT NULL,
    CONSTRAINT app_status_pkey PRIMARY KEY (cluster, application),
    CONSTRAINT app_status_cluster_fkey FOREIGN KEY (cluster)
        REFERENCES clusters (name) ON DELETE CASCADE,
    CONSTRAINT app_status_resources_array CHECK (jsonb_typeof(resources) = 'array')
);
-- Statuses of one application across the fleet (the primary key serves
-- lookups by cluster).
CREATE INDEX app_status_application_idx ON app_status (application);

CREATE TABLE events (
    id          bigserial   NOT NULL,
    time        timestamptz NOT NULL DEFAULT now(),
    -- Dotted kind, e.g. "cluster.registered".
    kind        text        NOT NULL,
    actor       text        NOT NULL DEFAULT '',
    cluster     text        NOT NULL DEFAULT '',
    application text        NOT NULL DEFAULT '',
    message     text        NOT NULL DEFAULT '',
    details     jsonb,
    CONSTRAINT events_pkey PRIMARY KEY (id)
);
-- Newest-first listing (ORDER BY id DESC, keyset on id) filtered by
-- cluster, application or a prefix of kind; the unfiltered listing scans the
-- primary key backwards.
CREATE INDEX events_cluster_id_idx ON events (cluster, id DESC) WHERE cluster <> '';
CREATE INDEX events_application_id_idx ON events (application, id DESC) WHERE application <> '';
-- text_pattern_ops serves LIKE 'prefix%' whatever the database collation.
CREATE INDEX events_kind_id_idx ON events (kind text_pattern_ops, id DESC);

-- Hub-level singletons (for example the agent CA), keyed by name.
CREATE TABLE settings (
    key        text        NOT NULL,
    value      bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT settings_pkey PRIMARY KEY (key)
);

-- +goose Down

DROP TABLE settings;
DROP TABLE events;
DROP TABLE app_status;
DROP TABLE releases;
DROP TABLE applications;
DROP TABLE repositories;
DROP TABLE api_tokens;
DROP TABLE join_tokens;
DROP TABLE clusters;
