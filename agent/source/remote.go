package source

import (
	"errors"
	"net/url"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// RedactURL returns u without anything that may be a credential: the
// userinfo of a URL ("https://user:token@host/repo" → "https://host/repo"),
// its query and fragment, and the user of an scp-style address
// ("git@host:org/repo" → "host:org/repo"). Every error and log line of this
// package names repositories through it. Input that does not parse is cut
// after its last "@", so a malformed URL cannot leak a password either.
//
// The hub's gitwatch package redacts the same way; the agent may not import
// it, so the two must be kept in step.
func RedactURL(u string) string {
	u = strings.TrimSpace(u)
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		prefix := u
		if slash := strings.IndexByte(u, '/'); slash >= 0 {
			prefix = u[:slash]
		}
		if at := strings.LastIndexByte(prefix, '@'); at >= 0 {
			return u[at+1:]
		}
		return u
	}
	// An "@" after the host, with no user parsed, is most likely a password
	// holding an unescaped "/" that moved the authority's end: treat it as
	// unparseable rather than print the rest.
	if p, err := url.Parse(u); err == nil && p.Host != "" && (p.User != nil || !strings.Contains(p.EscapedPath(), "@")) {
		p.User = nil
		p.RawQuery, p.ForceQuery = "", false
		p.Fragment, p.RawFragment = "", ""
		return p.String()
	}
	// Unparseable: an unescaped "/" or "?" in a password splits the authority
	// in the wrong place, so cut after the last "@" anywhere.
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		rest = rest[at+1:]
	}
	if q := strings.IndexAny(rest, "?#"); q >= 0 {
		rest = rest[:q]
	}
	return scheme + "://" + rest
}

// defaultPorts are dropped by normalizeURL, so "https://host:443/r" and
// "https://host/r" share one cached repository.
var defaultPorts = map[string]string{"http": "80", "https": "443", "ssh": "22", "git": "9418"}

// normalizeURL returns the key of a repository in the cache: credentials,
// query and fragment dropped, scheme and host lower-cased, a default port
// dropped, and trailing "/" and ".git" trimmed. Objects are addressed by
// their hash, so two spellings of one repository safely share a store.
// scp-style addresses keep their form: their path is relative to the SSH
// user's home, so "host:app" is not "ssh://host/app". The key follows what
// go-git dials, so for a malformed URL it may hold a credential: it is
// hashed, never shown.
func normalizeURL(u string) string {
	u = strings.TrimSpace(u)
	if !strings.Contains(u, "://") {
		r := RedactURL(u)
		if host, path, ok := strings.Cut(r, ":"); ok && !strings.Contains(host, "/") {
			return strings.ToLower(host) + ":" + trimRepoPath(path)
		}
		return trimRepoPath(r)
	}
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return trimRepoPath(RedactURL(u))
	}
	scheme := strings.ToLower(p.Scheme)
	host := strings.ToLower(p.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port := p.Port(); port != "" && port != defaultPorts[scheme] {
		host += ":" + port
	}
	return scheme + "://" + host + trimRepoPath(p.EscapedPath())
}

func trimRepoPath(p string) string {
	p = strings.TrimRight(p, "/")
	p = strings.TrimSuffix(p, ".git")
	return strings.TrimRight(p, "/")
}

// remote is a repository URL checked and split into what go-git needs.
type remote struct {
	// dial is the URL handed to go-git. It never carries a password.
	dial string
	// redacted names the repository in errors and logs.
	redacted string
	// key is the normalised URL the cache stores the repository under.
	key string
	// ssh is true for ssh:// URLs and scp-style addresses.
	ssh bool
	// host and port are the SSH server, for host key lookup.
	host, port string
	// user and password came from the URL's userinfo (HTTP only for the
	// password); RepoCredentials take precedence over them.
	user, password string
}

// parseRemote validates repoURL. Only network transports are accepted: a
// file:// URL or a local path would let whoever configures an application
// read the agent's own disk.
func parseRemote(repoURL string) (remote, error) {
	red := RedactURL(repoURL)
	switch {
	case repoURL == "":
		return remote{}, invalidf("repo_url: must not be empty")
	case strings.TrimSpace(repoURL) != repoURL || strings.ContainsAny(repoURL, " \t\r\n\x00"):
		return remote{}, invalidf("repo_url %q: must not contain spaces or control characters", red)
	}
	if !strings.Contains(repoURL, "://") {
		return parseSCP(repoURL, red)
	}
	u, err := url.Parse(repoURL)
	if err != nil {
		// The *url.Error quotes the raw URL, password and all; keep only
		// its cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return remote{}, invalidf("repo_url %q: %v", red, err)
	}
	scheme := strings.ToLower(u.Scheme)
	switch scheme {
	case "https", "http", "ssh", "git":
	default:
		return remote{}, invalidf("repo_url %q: scheme %q is not supported; use https, http, ssh or git", red, u.Scheme)
	}
	if u.Host == "" {
		return remote{}, invalidf("repo_url %q: has no host", red)
	}
	r := remote{redacted: red, key: normalizeURL(repoURL)}
	switch scheme {
	case "https", "http":
		if u.User != nil {
			r.user = u.User.Username()
			r.password, _ = u.User.Password()
			u.User = nil
		}
	case "ssh":
		r.ssh = true
		if u.User != nil {
			if _, has := u.User.Password(); has {
				return remote{}, invalidf("repo_url %q: must not carry a password; use an SSH key as the repository's credentials", red)
			}
			r.user = u.User.Username()
		}
		r.host, r.port = u.Hostname(), u.Port()
	case "git":
		// The unauthenticated git:// protocol; credentials are ignored.
	}
	if r.port == "" {
		r.port = "22"
	}
	r.dial = u.String()
	return r, nil
}

func parseSCP(repoURL, red string) (remote, error) {
	userHost, path, ok := strings.Cut(repoURL, ":")
	// "host:path" with no "/" before the colon; anything else is a local
	// path.
	if !ok || path == "" || strings.ContainsAny(userHost, "/\\") {
		return remote{}, invalidf("repo_url %q: not a URL; use https://, ssh:// or user@host:path (local paths are not allowed)", red)
	}
	user, host, hasUser := strings.Cut(userHost, "@")
	if !hasUser {
		host, user = userHost, ""
	}
	if host == "" || strings.Contains(user, ":") {
		return remote{}, invalidf("repo_url %q: not a valid user@host:path address", red)
	}
	return remote{dial: repoURL, redacted: red, key: normalizeURL(repoURL), ssh: true, host: host, port: "22", user: user}, nil
}

// authMethod turns the assignment's credentials into a go-git auth method.
// Errors name the field at fault and never its value.
func authMethod(r remote, creds *droverv1.RepoCredentials) (transport.AuthMethod, error) {
	user, pass := creds.GetUsername(), creds.GetPassword()
	key, knownHosts := creds.GetSshPrivateKey(), creds.GetSshKnownHosts()
	if !r.ssh {
		if key != "" || knownHosts != "" {
			return nil, invalidf("credentials: an SSH key is given for a repository whose URL is not ssh:// or user@host:path")
		}
		if user == "" && pass == "" {
			user, pass = r.user, r.password
		}
		if strings.HasPrefix(r.dial, "git://") || user == "" && pass == "" {
			return nil, nil
		}
		if user == "" {
			// Token-only credentials: the servers that take tokens as the
			// password (GitHub, GitLab, Gitea) accept any non-empty user.
			user = "git"
		}
		return &githttp.BasicAuth{Username: user, Password: pass}, nil
	}
	if key == "" {
		return nil, invalidf("credentials.ssh_private_key: required for the SSH URL %q", r.redacted)
	}
	if strings.TrimSpace(knownHosts) == "" {
		// Never trust an SSH server nobody vouched for: without known hosts
		// a man in the middle could serve any manifests.
		return nil, invalidf("credentials.ssh_known_hosts: required for the SSH URL %q", r.redacted)
	}
	if r.user == "" {
		r.user = user
	}
	if r.user == "" {
		r.user = "git"
	}
	keys, err := gitssh.NewPublicKeys(r.user, []byte(key), pass)
	if err != nil {
		// The parse error names neither the key nor the passphrase.
		return nil, invalidf("credentials.ssh_private_key: %v", err)
	}
	db, err := knownHostsDB(knownHosts)
	if err != nil {
		return nil, invalidf("credentials.ssh_known_hosts: %v", err)
	}
	keys.HostKeyCallback = db.HostKeyCallback()
	// Offer only the key types known_hosts lists for this host, or the
	// server may present another type and fail a check it would pass.
	keys.HostKeyAlgorithms = db.HostKeyAlgorithms(r.host + ":" + r.port)
	return keys, nil
}

// hostKeyDB is the part of go-git's known_hosts database authMethod uses.
type hostKeyDB interface {
	HostKeyCallback() ssh.HostKeyCallback
	HostKeyAlgorithms(hostWithPort string) []string
}

// knownHostsDB parses known_hosts lines. The parser takes only files, so the
// lines go through a temporary one; host keys are public, nothing secret is
// written to disk.
func knownHostsDB(lines string) (hostKeyDB, error) {
	f, err := os.CreateTemp("", "drover-known-hosts-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(lines + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return gitssh.NewKnownHostsDb(f.Name())
}

// secrets are the strings scrubbed from error text, in the forms a URL may
// carry them.
func secrets(r remote, creds *droverv1.RepoCredentials) []string {
	var out []string
	for _, v := range []string{creds.GetPassword(), creds.GetSshPrivateKey(), r.password} {
		if v != "" {
			out = append(out, v, url.PathEscape(v), url.QueryEscape(v))
		}
	}
	// A user name in a URL is often a token ("https://TOKEN@host/repo").
	// Short ones ("git", "oauth2") are not, and scrubbing them would mangle
	// the message.
	if len(r.user) >= 8 && !r.ssh {
		out = append(out, r.user, url.PathEscape(r.user))
	}
	return out
}
