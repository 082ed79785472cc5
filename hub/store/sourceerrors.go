package store

import (
	"context"
	"fmt"
)

// SetSourceError records the last error resolving an application's source,
// "" once it resolves again, and reports whether that changed what was
// recorded: the replica polling the repository records it, every replica
// shows it, and only a change makes an event, whichever replica polls.
// An unknown application changes nothing.
func (s *Store) SetSourceError(ctx context.Context, app, msg string) (changed bool, err error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	tag, err := s.pool.Exec(ctx, `
		UPDATE applications SET source_error = $2 WHERE name = $1 AND source_error <> $2`,
		app, cleanText(msg, maxEventMessageBytes))
	if err != nil {
		return false, classify(fmt.Sprintf("record the source error of application %q", app), err)
	}
	return tag.RowsAffected() > 0, nil
}

// SourceError returns the last error resolving an application's source, ""
// when it resolves.
func (s *Store) SourceError(ctx context.Context, app string) (string, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	var msg string
	if err := s.pool.QueryRow(ctx, `SELECT source_error FROM applications WHERE name = $1`, app).Scan(&msg); err != nil {
		return "", classify(fmt.Sprintf("source error of application %q", app), err)
	}
	return msg, nil
}
