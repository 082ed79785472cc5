package gitwatch

import (
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
)

// RedactURL returns u without anything that may be a credential: the
// userinfo of a URL ("https://user:token@host/repo" → "https://host/repo"),
// its query and fragment, and the user of an scp-style address
// ("git@host:org/repo" → "host:org/repo"). Every error and log line of this
// package names repositories through it. Input that does not parse is cut
// after its last "@", so a malformed URL cannot leak a password either.
func RedactURL(u string) string {
	u = strings.TrimSpace(u)
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		// scp-style [user@]host:path, or a local path. A user name, and with
		// it anything that looks like a password, ends at the last "@"
		// before the first "/".
		prefix := u
		if slash := strings.IndexByte(u, '/'); slash >= 0 {
			prefix = u[:slash]
		}
		if at := strings.LastIndexByte(prefix, '@'); at >= 0 {
			return u[at+1:]
		}
		return u
	}
	if p, err := url.Parse(u); err == nil && p.Host != "" {
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

// defaultPorts are dropped by NormalizeURL, so "https://host:443/r" and
// "https://host/r" are one repository.
var defaultPorts = map[string]string{"http": "80", "https": "443", "ssh": "22", "git": "9418"}

// NormalizeURL returns the key under which the Watcher deduplicates and the
// Resolver caches a repository: credentials, query and fragment dropped,
// scheme and host lower-cased, a default port dropped, and trailing "/" and
// ".git" trimmed, so "https://Git.Example.com/org/app.git/" and
// "https://git.example.com/org/app" are one repository. scp-style addresses
// keep their form ("host:org/app"): their path is relative to the SSH user's
// home, so they are not the same as an ssh:// URL.
func NormalizeURL(u string) string {
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

// remote is a repository URL checked and split into what go-git needs: the
// URL to dial, without credentials, and what the credentials may be.
type remote struct {
	// dial is the URL handed to go-git. It never carries a password.
	dial string
	// redacted names the repository in errors and logs.
	redacted string
	// ssh is true for ssh:// URLs and scp-style addresses.
	ssh bool
	// anonymous is true for git://, which has no authentication.
	anonymous bool
	// host and port are the SSH server, for host key lookup.
	host string
	port string
	// user and password came from the URL's userinfo (HTTP only for the
	// password); Credentials take precedence over them.
	user, password string
}

// parseRemote validates repoURL. Only network transports are accepted: a
// file:// URL or a local path would let whoever configures an application
// read the hub's own disk.
func parseRemote(repoURL string) (remote, error) {
	red := RedactURL(repoURL)
	switch {
	case repoURL == "":
		return remote{}, invalidf("repoURL: must not be empty")
	case strings.TrimSpace(repoURL) != repoURL || strings.ContainsAny(repoURL, " \t\r\n\x00"):
		return remote{}, invalidf("repoURL %q: must not contain spaces or control characters", red)
	}
	if !strings.Contains(repoURL, "://") {
		return parseSCP(repoURL, red)
	}
	u, err := url.Parse(repoURL)
	if err != nil {
		// The *url.Error names the raw URL, password and all; keep only its
		// cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return remote{}, invalidf("repoURL %q: %v", red, err)
	}
	r := remote{redacted: red}
	switch strings.ToLower(u.Scheme) {
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
				return remote{}, invalidf("repoURL %q: must not carry a password; store an SSH key as the repository's credentials", red)
			}
			r.user = u.User.Username()
		}
		r.host, r.port = u.Hostname(), u.Port()
		if r.port == "" {
			r.port = "22"
		}
	case "git":
		r.anonymous = true
	default:
		return remote{}, invalidf("repoURL %q: scheme %q is not supported; use https, http, ssh or git", red, u.Scheme)
	}
	if u.Host == "" {
		return remote{}, invalidf("repoURL %q: has no host", red)
	}
	r.dial = u.String()
	return r, nil
}

// parseSCP accepts what go-git dials as scp-style SSH ([user@]host:path),
// and nothing it would take for a local path.
func parseSCP(repoURL, red string) (remote, error) {
	ep, err := transport.NewEndpoint(repoURL)
	// err quotes repoURL; it is not passed on.
	if err != nil || ep.Protocol != "ssh" || ep.Host == "" {
		return remote{}, invalidf("repoURL %q: not a URL; use https://, ssh:// or user@host:path (local paths are not allowed)", red)
	}
	if strings.Contains(ep.User, ":") {
		return remote{}, invalidf("repoURL %q: must not carry a password; store an SSH key as the repository's credentials", red)
	}
	return remote{dial: repoURL, redacted: red, ssh: true, host: ep.Host, port: strconv.Itoa(ep.Port), user: ep.User}, nil
}

// secret is the credential the URL carried: its password, or for HTTP a
// user without one ("https://TOKEN@host/..."), which is a token.
func (r remote) secret() string {
	if r.password != "" || r.ssh {
		return r.password
	}
	return r.user
}

// String is the redacted URL, so a remote printed by mistake leaks nothing.
func (r remote) String() string { return r.redacted }
