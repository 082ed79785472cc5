package apply

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/drover-dev/drover/internal/retry"
)

// ObjectError is an object the API server refused (invalid, forbidden, a
// kind it does not serve), or one that belongs to another application.
// Err is the API server's error; errors.As reaches it through ObjectError.
type ObjectError struct {
	Object ObjectRef
	Err    error
}

func (e *ObjectError) Error() string { return e.Object.String() + ": " + e.Err.Error() }
func (e *ObjectError) Unwrap() error { return e.Err }

// ConflictError is the Err of an ObjectError for an object that another
// application applied: Drover never takes an object from one application
// for another.
type ConflictError struct {
	// Owner is the application named by the live object's label.
	Owner string
}

func (e *ConflictError) Error() string {
	return "the object belongs to application " + e.Owner + "; remove it from one of the two applications"
}

// classify marks err transient (retry.Transient) when the API server or
// the network failed rather than the objects: unreachable, overloaded or
// timed out. Other errors keep what they are marked, or are not transient.
// A cancelled ctx is returned as ctx.Err(): cancellation is not a failure.
func classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !retry.IsTransient(err) && serverFailure(err) {
		return retry.Transient(err)
	}
	return err
}

// serverFailure classifies the API server's own failures by type: what it
// answers when it is overloaded, shutting down or timed out. Network
// failures below it are retry's to judge.
func serverFailure(err error) bool {
	return apierrors.IsServerTimeout(err) ||
		apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) ||
		apierrors.IsInternalError(err) ||
		apierrors.IsUnexpectedServerError(err)
}
