package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drover-dev/drover/internal/retry"
)

var (
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: an object with that key exists already.
	ErrConflict = errors.New("already exists")
	// ErrTokenInvalid: a join or API token was refused. The concrete error is
	// a *TokenError saying why.
	ErrTokenInvalid = errors.New("token invalid")
	// ErrInvalidArgument: an input failed validation. The concrete error is
	// a *ValidationError naming the field.
	ErrInvalidArgument = errors.New("invalid argument")
)

// Reasons a token is refused (TokenError.Reason).
const (
	TokenMalformed = "malformed"
	// TokenUnknown covers a wrong secret too, so a caller cannot learn which
	// token ids exist.
	TokenUnknown = "unknown"
	TokenExpired = "expired"
	// TokenUsed: a single-use join token was used already.
	TokenUsed = "used"
)

// TokenError says why a token was refused. It matches ErrTokenInvalid with
// errors.Is. Its message never contains the token.
type TokenError struct {
	Reason string
}

func (e *TokenError) Error() string { return "token " + e.Reason }

// Is makes errors.Is(err, ErrTokenInvalid) hold.
func (e *TokenError) Is(target error) bool { return target == ErrTokenInvalid }

// ValidationError names the input field that failed validation. It matches
// ErrInvalidArgument with errors.Is.
type ValidationError struct {
	// Field is the input's name as the API spells it, e.g. "labels[env]",
	// "page_token", "cluster_name".
	Field  string
	Reason string
}

func (e *ValidationError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

// Is makes errors.Is(err, ErrInvalidArgument) hold.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidArgument }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// SQLSTATE codes the store classifies.
const (
	codeUniqueViolation     = "23505"
	codeForeignKeyViolation = "23503"
)

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// classify wraps err with what it was doing, maps the errors callers
// branch on to the store's sentinels (no rows → ErrNotFound, a unique
// violation → ErrConflict) and marks the driver's error transient or
// permanent for retry.IsTransient. The driver error stays in the chain.
func classify(op string, err error) error {
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	case pgCode(err) == codeUniqueViolation:
		return fmt.Errorf("%s: %w: %w", op, ErrConflict, retry.Permanent(err))
	default:
		return fmt.Errorf("%s: %w", op, retry.Mark(err, transient(err)))
	}
}

// transient reports whether retrying the operation that returned err may
// succeed: connection failures, timeouts, deadlocks, serialization
// failures, a server shutting down or out of resources. Data and
// programming errors are not transient. Cancellation of the caller's own
// context is not transient either: the caller gave up.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch sqlClass(pe) {
		case "08", // connection exception
			"40", // transaction rollback: serialization failure, deadlock
			"53", // insufficient resources
			"57", // operator intervention: shutdown, query canceled
			"58": // system error
			return true
		}
		// A row whose cluster was deleted concurrently: the next attempt
		// no longer sees the cluster and skips the row.
		return pe.Code == codeForeignKeyViolation
	}
	// Anything below the protocol (dial, TLS, a closed pool connection).
	var ce *pgconn.ConnectError
	return errors.As(err, &ce) || pgconn.SafeToRetry(err) || isNetError(err)
}

// isPoison reports whether err is the database refusing the data itself
// (a value out of range, an invalid byte sequence, a constraint), so
// retrying the same rows can never succeed.
func isPoison(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch sqlClass(pe) {
	case "22", // data exception
		"54": // program limit exceeded (e.g. a value too large)
		return true
	case "23": // integrity constraint violation
		return pe.Code != codeForeignKeyViolation
	}
	return false
}

// sqlClass is the class (first two characters) of an SQLSTATE.
func sqlClass(pe *pgconn.PgError) string {
	if len(pe.Code) < 2 {
		return ""
	}
	return pe.Code[:2]
}
