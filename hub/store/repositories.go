package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Authentication types of repository credentials.
const (
	AuthBasic = "basic"
	AuthSSH   = "ssh"
	// AuthCA is a record holding only a CA bundle, for a Helm repository
	// or OCI registry behind a private CA that needs no credentials.
	AuthCA = "ca"
)

// maxRepoURLBytes bounds repository URLs (the primary key).
const maxRepoURLBytes = 2048

// validateRepoURL refuses URLs that carry credentials: those belong in the
// sealed credentials, never in a key that is listed and logged.
func validateRepoURL(raw string) error {
	if raw == "" {
		return invalid("url", "must not be empty")
	}
	if len(raw) > maxRepoURLBytes {
		return invalid("url", "longer than %d bytes", maxRepoURLBytes)
	}
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if _, hasPassword := u.User.Password(); hasPassword {
			return invalid("url", "must not contain a password; set it as the credentials")
		}
	}
	return nil
}

// SetRepository stores (or replaces) the sealed credentials of a
// repository URL. The store keeps sealed as opaque bytes; hub/secrets
// seals and opens them.
func (s *Store) SetRepository(ctx context.Context, repoURL, authType, username string, sealed []byte, now time.Time) (*droverv1.Repository, error) {
	if err := validateRepoURL(repoURL); err != nil {
		return nil, err
	}
	if authType != AuthBasic && authType != AuthSSH && authType != AuthCA {
		return nil, invalid("auth_type", "%q is not %q, %q or %q", authType, AuthBasic, AuthSSH, AuthCA)
	}
	if len(sealed) == 0 {
		return nil, invalid("credentials", "missing")
	}
	username = cleanText(username, maxShortTextBytes)
	err := s.inTxNotify(ctx, Change{Kind: ChangeRepo, Name: repoURL}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
		INSERT INTO repositories (url, auth_type, username, sealed_credentials, updated_at)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (url) DO UPDATE SET auth_type = EXCLUDED.auth_type, username = EXCLUDED.username,
			sealed_credentials = EXCLUDED.sealed_credentials, updated_at = EXCLUDED.updated_at`,
			repoURL, authType, username, sealed, now)
		return err
	})
	if err != nil {
		return nil, classify(fmt.Sprintf("set repository %s", repoURL), err)
	}
	return &droverv1.Repository{Url: repoURL, AuthType: authType, Username: username, UpdatedAt: ts(now)}, nil
}

// GetRepositorySealed returns the sealed credentials of a repository URL
// and their type; ErrNotFound when none are stored.
func (s *Store) GetRepositorySealed(ctx context.Context, repoURL string) (sealed []byte, authType string, err error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	err = s.pool.QueryRow(ctx, `SELECT sealed_credentials, auth_type FROM repositories WHERE url = $1`, repoURL).
		Scan(&sealed, &authType)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, "", fmt.Errorf("credentials of repository %s: %w", repoURL, ErrNotFound)
	}
	if err != nil {
		return nil, "", classify(fmt.Sprintf("credentials of repository %s", repoURL), err)
	}
	return sealed, authType, nil
}

// ListRepositories lists the repositories with stored credentials, by URL,
// without the credentials.
func (s *Store) ListRepositories(ctx context.Context) ([]*droverv1.Repository, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT url, auth_type, username, updated_at FROM repositories ORDER BY url`)
	if err != nil {
		return nil, classify("list repositories", err)
	}
	var out []*droverv1.Repository
	for rows.Next() {
		var (
			r       droverv1.Repository
			updated time.Time
		)
		if err := rows.Scan(&r.Url, &r.AuthType, &r.Username, &updated); err != nil {
			return nil, classify("list repositories", err)
		}
		r.UpdatedAt = ts(updated)
		out = append(out, &r)
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list repositories", err)
	}
	return out, nil
}

// DeleteRepository deletes the credentials of a repository URL.
func (s *Store) DeleteRepository(ctx context.Context, repoURL string) error {
	return s.execOneNotify(ctx, fmt.Sprintf("delete repository %s", repoURL), Change{Kind: ChangeRepo, Name: repoURL},
		`DELETE FROM repositories WHERE url = $1`, repoURL)
}
