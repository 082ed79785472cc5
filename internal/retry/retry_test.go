package retry

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
)

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestIsTransient(t *testing.T) {
	addr := closedPort(t)
	_, dialErr := net.Dial("tcp", addr)
	if dialErr == nil {
		t.Fatalf("dial %s: connected to a closed port", addr)
	}
	_, httpErr := http.Get("http://" + addr + "/")
	if httpErr == nil {
		t.Fatalf("GET %s: answered by a closed port", addr)
	}
	plain := errors.New("bad input")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"unmarked plain error", plain, false},
		{"marked transient", Transient(plain), true},
		{"marked transient, wrapped", fmt.Errorf("step: %w", Transient(plain)), true},
		{"marked permanent", Permanent(dialErr), false},
		{"outer mark decides", Permanent(fmt.Errorf("render: %w", Transient(plain))), false},
		{"outer transient over inner permanent", Transient(Permanent(plain)), true},
		{"refused dial", dialErr, true},
		{"refused HTTP request", fmt.Errorf("list: %w", httpErr), true},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), true},
		{"unexpected EOF", io.ErrUnexpectedEOF, true},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), false},
		{"unknown certificate authority", fmt.Errorf("get: %w", x509.UnknownAuthorityError{}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsTransient(tt.err); got != tt.want {
				t.Errorf("IsTransient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestMarkKeepsTextAndCause(t *testing.T) {
	cause := io.ErrUnexpectedEOF
	err := Permanent(fmt.Errorf("read: %w", cause))
	if err.Error() != "read: unexpected EOF" || !errors.Is(err, cause) {
		t.Errorf("Permanent(...) = %q; want the text unchanged and the cause reachable", err)
	}
	if Transient(nil) != nil || Permanent(nil) != nil {
		t.Error("marking nil gave an error")
	}
}
