package apply

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"syscall"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// RetryableError is a failure that may go away by itself: the API server
// is unreachable, overloaded or timed out, an object Drover waits for did
// not become ready in time, or another writer changed the inventory at
// the same moment. Retrying the same Sync later can succeed.
type RetryableError struct {
	Err error
}

func (e *RetryableError) Error() string { return e.Err.Error() }
func (e *RetryableError) Unwrap() error { return e.Err }

// IsRetryable reports whether retrying the operation that returned err can
// succeed without a change to the rendered objects.
func IsRetryable(err error) bool {
	var r *RetryableError
	return errors.As(err, &r)
}

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

// retryable wraps err in a RetryableError when it is transient. A
// cancelled ctx is returned as ctx.Err(): cancellation is not a failure.
func retryable(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if IsRetryable(err) || !transient(err) {
		return err
	}
	return &RetryableError{Err: err}
}

// transient classifies errors from the API server and the network by type.
func transient(err error) bool {
	switch {
	case apierrors.IsServerTimeout(err),
		apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err),
		apierrors.IsServiceUnavailable(err),
		apierrors.IsInternalError(err),
		apierrors.IsUnexpectedServerError(err):
		return true
	case errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, context.DeadlineExceeded):
		return true
	}
	// A certificate the agent cannot verify does not fix itself.
	var (
		unknownAuthority x509.UnknownAuthorityError
		invalidCert      x509.CertificateInvalidError
		hostname         x509.HostnameError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &invalidCert) || errors.As(err, &hostname) {
		return false
	}
	// *url.Error and *net.OpError are net.Errors: a request that never got
	// an answer from the API server.
	var netErr net.Error
	return errors.As(err, &netErr)
}
