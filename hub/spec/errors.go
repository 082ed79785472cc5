package spec

import (
	"fmt"
	"strings"
)

// FieldError says which field of an input is wrong and why, in the admin
// API's JSON names: "spec.source.repoURL" for an application's spec,
// "rollout.waves[1].maxParallel" for a strategy ParseStrategy reads alone.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// FieldErrors is every problem found in one input, in field order, so
// that a user fixes all of them in one round. errors.As finds both
// FieldErrors and the first *FieldError in it.
type FieldErrors []*FieldError

func (es FieldErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// Unwrap lets errors.As reach the individual field errors.
func (es FieldErrors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}

// Err returns es as an error, or nil when it is empty: a nil FieldErrors in
// an error interface would not be a nil error.
func (es FieldErrors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// Add records a problem with fld.
func (es *FieldErrors) Add(fld, format string, args ...any) {
	*es = append(*es, &FieldError{Field: fld, Msg: fmt.Sprintf(format, args...)})
}
