package store

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A Helm or OCI source's release pins a revision VERSION@sha256:HEX where
// a Git source's pins a commit; anything else is refused.
func TestReleasesPinRevisions(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if _, err := s.CreateApplication(ctx, testApp("web", "main"), "alice"); err != nil {
		t.Fatal(err)
	}
	rev := "1.2.3@sha256:" + strings.Repeat("0a", 32)
	created, err := s.AddRelease(ctx, "web", rev, "~1.2", "", testNow)
	if err != nil || !created {
		t.Fatalf("AddRelease(%s) = %v, %v", rev, created, err)
	}
	rels, err := s.ListReleases(ctx, "web", 1)
	if err != nil || len(rels) != 1 || rels[0].GetCommit() != rev || rels[0].GetContentCommit() != rev || rels[0].GetRef() != "~1.2" {
		t.Fatalf("releases %v, %v; want one at %s from ~1.2", rels, err, rev)
	}
	for _, bad := range []string{
		"1.2.3@sha256:" + strings.Repeat("0A", 32), // upper case
		"1.2.3@sha256:" + strings.Repeat("0a", 31), // short
		"1.2.3",
		"~1.2@sha256:" + strings.Repeat("0a", 32),
	} {
		var ve *ValidationError
		if _, err := s.AddRelease(ctx, "web", bad, "", "", testNow); !errors.As(err, &ve) || ve.Field != "commit" {
			t.Errorf("AddRelease(%q) = %v, want a *ValidationError for commit", bad, err)
		}
	}
}
