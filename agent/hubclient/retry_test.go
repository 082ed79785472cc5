package hubclient

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestRetryHint(t *testing.T) {
	withHint := func(d *durationpb.Duration) error {
		st, err := status.New(codes.ResourceExhausted, "busy").WithDetails(&errdetails.RetryInfo{RetryDelay: d})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	tests := []struct {
		name string
		err  error
		want time.Duration
	}{
		{"refusal with a delay", withHint(durationpb.New(7 * time.Second)), 7 * time.Second},
		{"wrapped refusal", fmt.Errorf("session: %w", withHint(durationpb.New(time.Second))), time.Second},
		{"delay beyond the cap", withHint(durationpb.New(24 * time.Hour)), maxRetryHint},
		{"invalid delay", withHint(&durationpb.Duration{Seconds: 1, Nanos: -1}), 0},
		{"refusal without a delay", status.Error(codes.ResourceExhausted, "busy"), 0},
		{"other error", errors.New("connection reset"), 0},
		{"no error", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retryHint(tt.err); got != tt.want {
				t.Fatalf("retryHint = %v; want %v", got, tt.want)
			}
		})
	}
}
