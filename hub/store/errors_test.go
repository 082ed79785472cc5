package store

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drover-dev/drover/internal/retry"
)

func TestErrorClasses(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("write: %w", &pgconn.PgError{Code: code}) }
	tests := []struct {
		name              string
		err               error
		transient, poison bool
	}{
		{"nil", nil, false, false},
		{"canceled", context.Canceled, false, false},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), true, false},
		{"deadlock", pg("40P01"), true, false},
		{"serialization", pg("40001"), true, false},
		{"admin shutdown", pg("57P01"), true, false},
		{"too many connections", pg("53300"), true, false},
		{"foreign key", pg(codeForeignKeyViolation), true, false},
		{"unique", pg(codeUniqueViolation), false, true},
		{"bad utf8", pg("22021"), false, true},
		{"value too large", pg("54000"), false, true},
		{"undefined column", pg("42703"), false, false},
		{"plain error", errors.New("boom"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := transient(tt.err); got != tt.transient {
				t.Errorf("transient = %v, want %v", got, tt.transient)
			}
			// What callers see: the store's errors are marked for retry.
			if tt.err != nil {
				if got := retry.IsTransient(classify("write", tt.err)); got != tt.transient {
					t.Errorf("retry.IsTransient(classify(...)) = %v, want %v", got, tt.transient)
				}
			}
			if got := isPoison(tt.err); got != tt.poison {
				t.Errorf("isPoison = %v, want %v", got, tt.poison)
			}
		})
	}
}

func TestTokenAndValidationErrors(t *testing.T) {
	var err error = &TokenError{Reason: TokenExpired}
	if !errors.Is(fmt.Errorf("register: %w", err), ErrTokenInvalid) || errors.Is(err, ErrNotFound) {
		t.Errorf("TokenError does not match ErrTokenInvalid alone")
	}
	err = invalid("labels[\"a\"]", "bad")
	if !errors.Is(fmt.Errorf("x: %w", err), ErrInvalidArgument) || err.Error() != `invalid labels["a"]: bad` {
		t.Errorf("ValidationError = %v", err)
	}
}
