package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// GetSetting returns a hub setting's value; ErrNotFound when unset.
func (s *Store) GetSetting(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	var v []byte
	err := s.pool.QueryRow(ctx, `SELECT value FROM settings WHERE key = $1`, key).Scan(&v)
	if err != nil {
		return nil, classify(fmt.Sprintf("get setting %q", key), err)
	}
	return v, nil
}

// PutSetting sets a hub setting, replacing any value it had.
func (s *Store) PutSetting(ctx context.Context, key string, value []byte) error {
	if key == "" {
		return invalid("key", "must not be empty")
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, `
		INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at`, key, value)
	if err != nil {
		return classify(fmt.Sprintf("put setting %q", key), err)
	}
	return nil
}

// InitSetting sets a hub setting only when it is unset, and returns the
// value it has afterwards: value when this call set it, the earlier value
// otherwise. Replicas racing to create a singleton (a CA, say) all end up
// with the one that won.
func (s *Store) InitSetting(ctx context.Context, key string, value []byte) (stored []byte, err error) {
	if key == "" {
		return nil, invalid("key", "must not be empty")
	}
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	err = s.pool.QueryRow(ctx, `
		INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (key) DO NOTHING RETURNING value`, key, value).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		// Taken already: the insert's snapshot could not see the row, a
		// new statement can.
		err = s.pool.QueryRow(ctx, `SELECT value FROM settings WHERE key = $1`, key).Scan(&stored)
	}
	if err != nil {
		return nil, classify(fmt.Sprintf("init setting %q", key), err)
	}
	return stored, nil
}
