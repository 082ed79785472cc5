-- A Helm repository or OCI registry behind a private CA may need only that
-- CA, no credentials: such a repository's stored record (still sealed:
-- one record says how to reach a source) has auth type 'ca'. A basic-auth
-- record may carry a CA too; the sealed blob holds it either way.

-- +goose Up

ALTER TABLE repositories DROP CONSTRAINT repositories_auth_type_check;
ALTER TABLE repositories ADD CONSTRAINT repositories_auth_type_check CHECK (auth_type IN ('basic', 'ssh', 'ca'));

-- +goose Down

DELETE FROM repositories WHERE auth_type = 'ca';
ALTER TABLE repositories DROP CONSTRAINT repositories_auth_type_check;
ALTER TABLE repositories ADD CONSTRAINT repositories_auth_type_check CHECK (auth_type IN ('basic', 'ssh'));
