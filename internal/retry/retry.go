// Package retry is the one way Drover's hub and agent say whether an
// operation that failed is worth trying again unchanged. The package that
// knows why an operation failed marks its error Transient (the network, a
// server that is down or overloaded, a timeout, a concurrent writer) or
// Permanent (the input is wrong: bad credentials, bad YAML, an object the
// API server refuses); callers anywhere ask IsTransient and back off, or
// report and wait for the input to change.
//
// A mark wraps the error without changing its text, so errors.Is and
// errors.As still reach the cause. The outermost mark decides, so a step
// can override what a lower layer said. An error without a mark is judged
// by type: failures below every protocol (a refused or reset connection,
// an unexpected EOF, a deadline, any net.Error) are transient, except a
// certificate that cannot be verified, which does not fix itself; anything
// else is not, and neither is cancellation, since the caller gave up.
package retry

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"syscall"
)

// Error is err marked as transient or not. Its text is Err's.
type Error struct {
	Err error
	// Transient is true when trying the same operation again, unchanged,
	// may succeed.
	Transient bool
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Transient marks err as a failure that may pass by itself. A nil err
// stays nil.
func Transient(err error) error { return Mark(err, true) }

// Permanent marks err as a failure that trying again unchanged cannot fix.
// A nil err stays nil.
func Permanent(err error) error { return Mark(err, false) }

// Mark marks err as transient or not; a nil err stays nil.
func Mark(err error, transient bool) error {
	if err == nil {
		return nil
	}
	return &Error{Err: err, Transient: transient}
}

// IsTransient reports whether trying the operation that returned err again,
// unchanged, may succeed: the outermost mark in err's chain says so, or,
// with no mark, err is a network-level failure (see the package comment).
// It is false for nil.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Transient
	}
	return networkFailure(err)
}

// networkFailure classifies errors from below every protocol by type.
func networkFailure(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	// A certificate the client cannot verify does not fix itself; these
	// come wrapped in a *url.Error, which is a net.Error.
	var (
		unknownAuthority x509.UnknownAuthorityError
		invalidCert      x509.CertificateInvalidError
		hostname         x509.HostnameError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &invalidCert) || errors.As(err, &hostname) {
		return false
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, context.DeadlineExceeded):
		return true
	}
	// *url.Error and *net.OpError are net.Errors: a request that never got
	// an answer.
	var netErr net.Error
	return errors.As(err, &netErr)
}
