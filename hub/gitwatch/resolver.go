// Package gitwatch turns applications' Git refs into pinned commits for the
// hub. A Resolver asks a remote for its refs with one ls-remote and, for
// no-op release detection, compares paths between two commits through a
// bounded shallow-fetch cache. A Watcher polls every repository that
// applications use, once per repository however many applications share it,
// and reports each application's commit, or why there is none, to a Sink.
// It polls Helm repositories and OCI registries the same way, resolving
// versions with internal/artifact (one index.yaml or tag list per
// repository per poll) to revisions VERSION@sha256:HEX.
package gitwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"

	"github.com/drover-dev/drover/internal/gitremote"
)

// Credentials for one repository, as stored by the hub. Username and
// Password are HTTP basic auth (a token goes in Password). SSHPrivateKey is
// a PEM key for ssh:// and scp-style URLs, with Password as its passphrase
// if it has one; SSHKnownHosts (known_hosts lines) is then required: the hub
// never trusts an SSH server it has not been told about.
type Credentials = gitremote.Credentials

// RedactURL returns u without anything that may be a credential
// (gitremote.RedactURL). Every error and log line of this package names
// repositories through it.
func RedactURL(u string) string { return gitremote.RedactURL(u) }

// NormalizeURL returns the key under which the Watcher deduplicates and the
// Resolver caches a repository (gitremote.NormalizeURL): one key for every
// spelling of one repository. It may hold a credential of a malformed URL,
// so it is compared, never shown.
func NormalizeURL(u string) string { return gitremote.NormalizeURL(u) }

// Resolver resolves refs and compares commits of remote repositories. It is
// safe for concurrent use.
type Resolver struct {
	log   *slog.Logger
	cache *commitCache
}

// NewResolver returns a Resolver whose PathsChanged keeps shallow fetches in
// cacheDir (created when first needed). An empty cacheDir keeps nothing:
// every PathsChanged call fetches into memory and forgets.
func NewResolver(cacheDir string, log *slog.Logger) *Resolver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Resolver{log: log, cache: newCommitCache(cacheDir)}
}

// Resolve lists repoURL's refs with one ls-remote and maps each of refs to a
// commit SHA:
//   - "" or "HEAD": the commit the remote's HEAD (its default branch) points
//     to;
//   - a branch or tag, short ("main", "v1.2") or full ("refs/heads/main",
//     "refs/tags/v1.2"); annotated tags are peeled to their commit, and a
//     short name that is both a branch and a tag is an error (ErrAmbiguousRef)
//     rather than a guess;
//   - a full 40-hex commit SHA: itself, lower-cased, without a lookup.
//
// If the remote cannot be listed, Resolve returns a nil map and an error
// classified with ErrAuth, ErrHostKey, ErrNotFound or ErrInvalid, or a
// retryable one. If only some refs fail, the map holds the others and the
// error is a RefErrors. Errors name the repository by RedactURL and never
// contain a credential.
func (r *Resolver) Resolve(ctx context.Context, repoURL string, auth Credentials, refs []string) (map[string]string, error) {
	rem, am, err := prepare(repoURL, auth)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", RedactURL(repoURL), err)
	}

	// Refs that need no listing, or cannot be valid, are settled first; a
	// call with only SHAs does not touch the network.
	out := make(map[string]string, len(refs))
	var refErrs RefErrors
	var lookup []string
	for _, ref := range refs {
		if _, done := out[ref]; done || refErrs.For(ref) != nil || contains(lookup, ref) {
			continue
		}
		switch sha, err := checkRef(ref); {
		case err != nil:
			refErrs = append(refErrs, &RefError{Repo: rem.Redacted, Ref: ref, Err: err})
		case sha != "":
			out[ref] = sha
		default:
			lookup = append(lookup, ref)
		}
	}
	if len(lookup) > 0 {
		advertised, err := r.list(ctx, rem, repoURL, am, auth)
		if err != nil {
			return nil, err
		}
		for _, ref := range lookup {
			sha, err := advertised.resolve(ref)
			if err != nil {
				refErrs = append(refErrs, &RefError{Repo: rem.Redacted, Ref: ref, Err: err})
				continue
			}
			out[ref] = sha
		}
	}
	if len(refErrs) > 0 {
		return out, refErrs
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// list runs the one ls-remote of a Resolve call.
func (r *Resolver) list(ctx context.Context, rem gitremote.Remote, rawURL string, am transport.AuthMethod, auth Credentials) (refTable, error) {
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{rem.Dial}})
	listed, err := remote.ListContext(ctx, &git.ListOptions{Auth: am, PeelingOption: git.AppendPeeled})
	switch {
	case errors.Is(err, transport.ErrEmptyRemoteRepository):
		// No commits yet: every ref is simply not found.
		return refTable{}, nil
	case err != nil:
		return nil, wrapRemote("resolve", rem, rawURL, err, rem.Secrets(auth))
	}
	t := make(refTable, len(listed))
	for _, ref := range listed {
		t[ref.Name().String()] = ref
	}
	return t, nil
}

// checkRef validates ref. For a full commit SHA it returns the SHA; for
// anything else "" and, if the name cannot be a ref, an ErrInvalid.
func checkRef(ref string) (string, error) {
	switch {
	case ref == "" || ref == "HEAD":
		return "", nil
	case len(ref) == gitremote.CommitLength && isHex(ref):
		return gitremote.CheckCommit(ref)
	}
	if gitremote.CheckRef(ref) != nil {
		return "", invalidf("not a valid branch, tag or commit SHA")
	}
	return "", nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return s != ""
}

// refTable is what a remote advertised, by full ref name; peeled tags appear
// under "refs/tags/NAME^{}".
type refTable map[string]*plumbing.Reference

func (t refTable) resolve(ref string) (string, error) {
	if ref == "" || ref == "HEAD" {
		return t.head()
	}
	if strings.HasPrefix(ref, "refs/") {
		if sha, ok := t.commit(ref); ok {
			return sha, nil
		}
		return "", ErrRefNotFound
	}
	branch, isBranch := t.commit("refs/heads/" + ref)
	tag, isTag := t.commit("refs/tags/" + ref)
	switch {
	case isBranch && isTag:
		return "", fmt.Errorf("%w: both a branch and a tag; use refs/heads/%s or refs/tags/%s", ErrAmbiguousRef, ref, ref)
	case isBranch:
		return branch, nil
	case isTag:
		return tag, nil
	}
	if len(ref) >= 4 && len(ref) < gitremote.CommitLength && isHex(ref) {
		return "", fmt.Errorf("%w: an abbreviated SHA cannot be looked up remotely; use the full SHA", ErrRefNotFound)
	}
	return "", ErrRefNotFound
}

// commit returns the commit a full ref name points to, peeling an annotated
// tag through the "^{}" entry ls-remote lists after it.
func (t refTable) commit(name string) (string, bool) {
	if peeled, ok := t[name+"^{}"]; ok {
		return peeled.Hash().String(), true
	}
	ref, ok := t[name]
	if !ok || ref.Type() != plumbing.HashReference {
		return "", false
	}
	return ref.Hash().String(), true
}

// head follows the remote HEAD. Servers that announce the symref capability
// (all current ones) list HEAD as a symbolic ref; older ones list its hash.
func (t refTable) head() (string, error) {
	h, ok := t["HEAD"]
	if !ok {
		return "", fmt.Errorf("%w: the remote has no HEAD", ErrRefNotFound)
	}
	if h.Type() == plumbing.HashReference {
		return h.Hash().String(), nil
	}
	if sha, ok := t.commit(h.Target().String()); ok {
		return sha, nil
	}
	return "", fmt.Errorf("%w: the remote HEAD points to %s, which does not exist", ErrRefNotFound, h.Target())
}

// prepare validates repoURL and auth and turns them into a go-git auth
// method. Errors name the field at fault.
func prepare(repoURL string, auth Credentials) (gitremote.Remote, transport.AuthMethod, error) {
	rem, err := gitremote.Parse(repoURL)
	if err != nil {
		return gitremote.Remote{}, nil, err
	}
	am, err := rem.Auth(auth)
	if err != nil {
		return gitremote.Remote{}, nil, err
	}
	return rem, am, nil
}
