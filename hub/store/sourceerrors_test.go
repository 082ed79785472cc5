package store

import (
	"context"
	"errors"
	"testing"
)

func TestSourceErrorChangesOnce(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if _, err := s.CreateApplication(ctx, testApp("web", "main"), "test"); err != nil {
		t.Fatal(err)
	}
	for i, step := range []struct {
		msg     string
		changed bool
	}{
		{"", false},              // resolves, as it always did
		{"ref not found", true},  // fails
		{"ref not found", false}, // still: another replica polled again
		{"", true},               // resolves again
	} {
		changed, err := s.SetSourceError(ctx, "web", step.msg)
		if err != nil || changed != step.changed {
			t.Fatalf("step %d: SetSourceError(%q) = %v, %v; want %v", i, step.msg, changed, err, step.changed)
		}
		if got, err := s.SourceError(ctx, "web"); err != nil || got != step.msg {
			t.Fatalf("step %d: SourceError = %q, %v; want %q", i, got, err, step.msg)
		}
	}
	if changed, err := s.SetSourceError(ctx, "gone", "x"); err != nil || changed {
		t.Errorf("SetSourceError of an unknown application = %v, %v; want no change", changed, err)
	}
	if _, err := s.SourceError(ctx, "gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SourceError of an unknown application: %v, want ErrNotFound", err)
	}
}
