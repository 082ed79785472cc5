-- A release's content commit: the commit whose tree its clusters get. It is
-- the release's own commit, or, when the commit changes nothing under the
-- application's paths (source.path and source.extraPaths), the content
-- commit of the release before it, so that such a commit moves no cluster
-- and makes no agent fetch. '' (the rows before this migration) means the
-- release's own commit.

-- +goose Up

ALTER TABLE releases
    ADD COLUMN content_commit text NOT NULL DEFAULT '';

-- +goose Down

ALTER TABLE releases
    DROP COLUMN content_commit;
