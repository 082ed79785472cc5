package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/retry"
	"github.com/drover-dev/drover/internal/testlog"
)

// TestCheckoutFetchesTheRefFromAStockServer checks what an agent fetches
// from a server that will not send a commit by its SHA (`git http-backend`
// with Git's defaults): with the ref the hub resolved the commit from, the
// ref's tip, or as deep as needed to reach the commit, and far fewer bytes
// than every branch and tag; every branch and tag only when the commit is
// not in the ref's history.
func TestCheckoutFetchesTheRefFromAStockServer(t *testing.T) {
	t.Parallel()
	srv := testbed.GitServer(t, testbed.WithStockConfig())
	repo := srv.CreateRepo(t, "monorepo")
	// Every commit brings its own 64 KiB of incompressible data, so that
	// each commit fetched costs about that much and fetching everything a
	// hundred times as much.
	rnd := rand.NewChaCha8([32]byte{'d', 'r', 'o', 'v', 'e', 'r'})
	blob := func() string {
		b := make([]byte, 64<<10)
		_, _ = rnd.Read(b)
		return string(b)
	}
	var commits []string
	for i := range 100 {
		sha := repo.Commit(t, fmt.Sprint("release ", i), map[string]string{"blob.bin": blob(), "app/config.yaml": fmt.Sprintf("release: %d\n", i)})
		commits = append(commits, sha)
		if i < 50 {
			repo.Branch(t, fmt.Sprintf("b-%02d", i), sha)
		} else {
			repo.Tag(t, fmt.Sprintf("v-%02d", i), sha)
		}
	}
	// main moves on by a few commits after the one a rollout still holds
	// some clusters on.
	held := repo.Commit(t, "held", map[string]string{"blob.bin": blob(), "app/config.yaml": "release: held\n"})
	for i := range 3 {
		repo.Commit(t, fmt.Sprint("after ", i), map[string]string{"blob.bin": blob(), "app/config.yaml": fmt.Sprintf("release: after %d\n", i)})
	}
	tip := repo.Head(t)

	type result struct {
		config    string
		sentBytes int64
		fetch     map[string]string // the "fetched commit" log line's attributes
	}
	recordedCache := func(t *testing.T) (*Cache, *fetchRecorder) {
		rec := &fetchRecorder{}
		c, err := NewCache(t.TempDir(), 1<<30, slog.New(slog.NewMultiHandler(testlog.New(t).Handler(), rec)))
		if err != nil {
			t.Fatal(err)
		}
		return c, rec
	}
	checkoutIn := func(t *testing.T, c *Cache, rec *fetchRecorder, commit, ref string) result {
		t.Helper()
		before, logged := srv.BytesSent(), len(rec.fetches())
		dir, release, err := c.Checkout(t.Context(), repo.URL, nil, commit, ref)
		if err != nil {
			t.Fatalf("Checkout %s (ref %q): %v", commit, ref, err)
		}
		defer release()
		sent := srv.BytesSent() - before
		f := files(t, dir)
		if len(f["blob.bin"]) != 64<<10 {
			t.Errorf("blob.bin: %d bytes, want %d", len(f["blob.bin"]), 64<<10)
		}
		fetches := rec.fetches()[logged:]
		if len(fetches) != 1 {
			t.Fatalf("logged %d fetches, want 1: %v", len(fetches), fetches)
		}
		t.Logf("fetched %d bytes: %v", sent, fetches[0])
		return result{config: f["app/config.yaml"], sentBytes: sent, fetch: fetches[0]}
	}
	checkout := func(t *testing.T, commit, ref string) result {
		t.Helper()
		c, rec := recordedCache(t)
		return checkoutIn(t, c, rec, commit, ref)
	}

	// What an agent fetched before assignments carried the ref, and still
	// fetches from a hub that sends none.
	all := checkout(t, tip, "")
	if all.fetch["via"] != viaAll || all.config != "release: after 2\n" {
		t.Fatalf("without a ref: fetched via %q, config %q; want via %q", all.fetch["via"], all.config, viaAll)
	}
	if all.sentBytes < 100*64<<10 {
		t.Fatalf("fetching everything sent %d bytes, less than the repository's data", all.sentBytes)
	}

	for _, tc := range []struct {
		name, commit, ref        string
		config, via, full, depth string
	}{
		{"tip of the branch", tip, "refs/heads/main", "release: after 2\n", viaRef, "refs/heads/main", "1"},
		{"default branch", tip, "HEAD", "release: after 2\n", viaRef, "HEAD", "1"},
		{"branch moved on", held, "main", "release: held\n", viaRef, "refs/heads/main", "10"},
		{"tag by its short name", commits[99], "v-99", "release: 99\n", viaRef, "refs/tags/v-99", "1"},
		// b-00 is the first commit: the tip of main is not in its history.
		{"commit not on the ref", tip, "b-00", "release: after 2\n", viaAll, "", "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkout(t, tc.commit, tc.ref)
			if got.config != tc.config {
				t.Errorf("app/config.yaml = %q, want %q", got.config, tc.config)
			}
			if got.fetch["via"] != tc.via || got.fetch["ref"] != tc.full || got.fetch["depth"] != tc.depth {
				t.Errorf("fetched via %q, ref %q, depth %s; want via %q, ref %q, depth %s",
					got.fetch["via"], got.fetch["ref"], got.fetch["depth"], tc.via, tc.full, tc.depth)
			}
			if tc.via == viaRef && got.sentBytes*5 >= all.sentBytes {
				t.Errorf("fetching through the ref sent %d bytes; everything is %d, want less than a fifth of it", got.sentBytes, all.sentBytes)
			}
		})
	}

	// A rollback in a cache that holds the tip shallowly: the held commit
	// comes by deepening what is there.
	t.Run("rollback in the same cache", func(t *testing.T) {
		c, rec := recordedCache(t)
		checkoutIn(t, c, rec, tip, "main")
		got := checkoutIn(t, c, rec, held, "main")
		if got.config != "release: held\n" || got.fetch["via"] != viaRef || got.fetch["depth"] != "10" {
			t.Errorf("config %q, fetched %v; want the held release via the ref at depth 10", got.config, got.fetch)
		}
		if got.sentBytes*5 >= all.sentBytes {
			t.Errorf("deepening sent %d bytes; everything is %d, want less than a fifth of it", got.sentBytes, all.sentBytes)
		}
	})
}

// fetchRecorder is a slog.Handler that keeps the attributes of every
// "fetched commit" record, ignoring those added with With; safe for
// concurrent use.
type fetchRecorder struct {
	mu   sync.Mutex // guards seen
	seen []map[string]string
}

func (r *fetchRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *fetchRecorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "fetched commit" {
		return nil
	}
	m := make(map[string]string)
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	r.seen = append(r.seen, m)
	r.mu.Unlock()
	return nil
}

func (r *fetchRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *fetchRecorder) WithGroup(string) slog.Handler      { return r }

func (r *fetchRecorder) fetches() []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]string(nil), r.seen...)
}

// TestCheckoutRefusesABadRef: a ref that is not a ref name is bad input,
// refused before anything is fetched.
func TestCheckoutRefusesABadRef(t *testing.T) {
	t.Parallel()
	srv := testbed.GitServer(t)
	repo := srv.CreateRepo(t, "apps")
	sha := repo.Commit(t, "one", map[string]string{"a.yaml": "a: 1\n"})
	before := srv.Requests()
	_, _, err := newCache(t, t.TempDir(), 1<<30).Checkout(t.Context(), repo.URL, nil, sha, "a..b")
	if !errors.Is(err, ErrInvalid) || retry.IsTransient(err) || !strings.Contains(err.Error(), `ref "a..b"`) {
		t.Errorf("bad ref: %v (retryable %v), want a permanent ErrInvalid naming the ref", err, retry.IsTransient(err))
	}
	if n := srv.Requests() - before; n != 0 {
		t.Errorf("the server had %d requests for a refused ref", n)
	}
}
