// Package gitremote is what the hub and the agent both need to talk to a Git
// repository safely: it validates a repository URL (network transports only,
// never a local path), a commit name and a ref name, turns the URL and the
// repository's credentials into what go-git dials with, redacts credentials
// from URLs and from go-git's error text, normalises URLs into cache and
// deduplication keys, and classifies go-git's permanent errors. Both sides
// import it, so a repository is named, keyed and trusted the same way by
// both.
package gitremote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Causes that say retrying will not help until someone changes the
// repository's URL, its credentials or the server. errors.Is finds them.
var (
	// ErrInvalid: an input (repository URL, credentials) is malformed; the
	// message names the field.
	ErrInvalid = errors.New("invalid input")
	// ErrAuth: the server rejected the credentials, or wants some and got
	// none (HTTP 401/403). An SSH server's refusal is not classified: the
	// SSH library reports it as plain text.
	ErrAuth = errors.New("authentication failed")
	// ErrHostKey: the SSH server's host key is not in the repository's
	// known hosts, or does not match them.
	ErrHostKey = errors.New("ssh host key not trusted")
	// ErrRepoNotFound: the repository does not exist (or the credentials
	// may not see it; servers answer both with 404).
	ErrRepoNotFound = errors.New("repository not found")
	// ErrObjectFormat: the repository uses Git's SHA-256 object format.
	// The Git library both sides fetch with reads SHA-1 repositories only,
	// so the hub refuses such a repository when it resolves it, before any
	// release could send agents a commit they cannot fetch.
	ErrObjectFormat = errors.New("the repository uses Git's SHA-256 object format; Drover fetches SHA-1 repositories only")
)

// RedactURL returns u without anything that may be a credential: the
// userinfo of a URL ("https://user:token@host/repo" → "https://host/repo"),
// its query and fragment, and the user of an scp-style address
// ("git@host:org/repo" → "host:org/repo"). Every error and log line naming a
// repository names it through this. Input that does not parse is cut after
// its last "@", so a malformed URL cannot leak a password either.
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

// defaultPorts are dropped by NormalizeURL, so "https://host:443/r" and
// "https://host/r" are one repository.
var defaultPorts = map[string]string{"http": "80", "https": "443", "ssh": "22"}

// NormalizeURL returns the key under which a repository is cached and
// deduplicated: credentials, query and fragment dropped, scheme and host
// lower-cased, a default port dropped, and trailing "/" and ".git" trimmed,
// so "https://Git.Example.com/org/app.git/" and
// "https://git.example.com/org/app" are one repository. Objects are
// addressed by their hash, so two spellings of one repository safely share a
// store. scp-style addresses keep their form ("host:org/app"): their path is
// relative to the SSH user's home, so they are not the same as an ssh:// URL.
//
// The key follows what go-git dials, so for a malformed URL it may hold a
// credential: use it as a map key or hash it, never show it.
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

// Remote is a repository URL checked and split into what go-git needs. Its
// String is the redacted URL, so a Remote printed by mistake leaks nothing.
type Remote struct {
	// Dial is the URL handed to go-git. It never carries a password.
	Dial string
	// Redacted names the repository in errors and logs (RedactURL).
	Redacted string
	// Key is the normalised URL (NormalizeURL); never show it.
	Key string
	// SSH is true for ssh:// URLs and scp-style addresses.
	SSH bool

	// host and port are the SSH server, for host key lookup.
	host, port string
	// user and password came from the URL's userinfo (HTTP only for the
	// password); Credentials take precedence over them.
	user, password string
}

func (r Remote) String() string { return r.Redacted }

// URLError says why a repository URL is refused. Reason never repeats the
// URL; Error names it redacted. It wraps ErrInvalid.
type URLError struct {
	Redacted string // the URL as RedactURL shows it
	Reason   string
}

func (e *URLError) Error() string { return fmt.Sprintf("repoURL %q: %s", e.Redacted, e.Reason) }
func (e *URLError) Unwrap() error { return ErrInvalid }

// The user and host of user@host:path: a DNS name or an IPv4 address, never
// something Git or SSH could read as an option or a transport. (IPv6 hosts
// need the ssh:// form.)
var (
	scpUser = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
	scpHost = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
)

const urlHint = "use https://, http://, ssh:// or user@host:path"

// Parse validates rawURL: it is the one definition of a repository URL that
// the hub accepts and every agent can fetch. Only network transports with
// authentication are accepted: a file:// URL or a local path would let
// whoever configures an application read the disk of the process that
// fetches it, ext:: would run commands, and git:// has no transport
// security at all. Errors are *URLError.
func Parse(rawURL string) (Remote, error) {
	red := RedactURL(rawURL)
	bad := func(format string, args ...any) (Remote, error) {
		return Remote{}, &URLError{Redacted: red, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case rawURL == "":
		return bad("must not be empty")
	case strings.IndexFunc(rawURL, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return bad("must not contain whitespace or control characters")
	}
	if !strings.Contains(rawURL, "://") {
		return parseSCP(rawURL, red)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// err quotes the raw URL, password and all: say less.
		return bad("not a valid URL")
	}
	r := Remote{Redacted: red, Key: NormalizeURL(rawURL)}
	switch strings.ToLower(u.Scheme) {
	case "https", "http":
		if u.User != nil {
			r.user = u.User.Username()
			r.password, _ = u.User.Password()
			u.User = nil
		}
	case "ssh":
		r.SSH = true
		if u.User != nil {
			if _, has := u.User.Password(); has {
				return bad("must not carry a password; use an SSH key as the repository's credentials")
			}
			r.user = u.User.Username()
		}
		r.host, r.port = u.Hostname(), u.Port()
		if r.port == "" {
			r.port = "22"
		}
	default:
		return bad("scheme %q is not supported; %s", u.Scheme, urlHint)
	}
	switch {
	case u.Hostname() == "":
		return bad("has no host")
	case strings.HasPrefix(u.Hostname(), "-"):
		return bad("host must not start with '-'")
	}
	r.Dial = u.String()
	return r, nil
}

// HasCredentials reports whether rawURL carries a user or password of its
// own (https://user:token@host/..., ssh://user:password@...). The hub
// refuses such URLs because URLs are shown and logged; credentials are
// stored apart. The user of an ssh:// or scp-style URL is not a secret.
func HasCredentials(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil || !strings.Contains(rawURL, "://") {
		return false
	}
	_, hasPassword := u.User.Password()
	return hasPassword || !strings.EqualFold(u.Scheme, "ssh")
}

// parseSCP accepts what go-git dials as scp-style SSH ([user@]host:path),
// and nothing it would take for a local path, an option or a remote helper.
// Asking go-git rather than splitting by hand keeps the host checked
// against known_hosts the one go-git connects to.
func parseSCP(rawURL, red string) (Remote, error) {
	bad := func(reason string) (Remote, error) {
		return Remote{}, &URLError{Redacted: red, Reason: reason}
	}
	ep, err := transport.NewEndpoint(rawURL)
	// err quotes rawURL; it is not passed on.
	if err == nil && strings.Contains(ep.User, ":") {
		return bad("must not carry a password; use an SSH key as the repository's credentials")
	}
	hostPart, repoPath, ok := strings.Cut(rawURL, ":")
	if !ok || strings.Contains(hostPart, "/") {
		return bad("not a network repository URL; local paths are not allowed; " + urlHint)
	}
	user, host, hasUser := strings.Cut(hostPart, "@")
	if !hasUser {
		host, user = user, ""
	}
	switch {
	case hasUser && !scpUser.MatchString(user):
		return bad("user in user@host:path may contain only letters, digits, '.', '_' and '-'")
	case !scpHost.MatchString(host):
		return bad("host in user@host:path is not a valid host name; " + urlHint)
	case repoPath == "" || strings.HasPrefix(repoPath, ":"):
		// "ext::cmd" and friends are Git's remote-helper syntax.
		return bad("not a supported repository URL; " + urlHint)
	case strings.HasPrefix(repoPath, "-"):
		return bad("path in user@host:path must not start with '-'")
	}
	if err != nil || ep.Protocol != "ssh" || ep.Host == "" || ep.Host != host {
		return bad("not a URL; " + urlHint + " (local paths are not allowed)")
	}
	return Remote{
		Dial: rawURL, Redacted: red, Key: NormalizeURL(rawURL), SSH: true,
		host: ep.Host, port: strconv.Itoa(ep.Port), user: ep.User,
	}, nil
}

// Credentials for one repository. Username and Password are HTTP basic auth
// (a token goes in Password). SSHPrivateKey is a PEM key for ssh:// and
// scp-style URLs, with Password as its passphrase if it has one;
// SSHKnownHosts (known_hosts lines) is then required: an SSH server nobody
// vouched for is never trusted.
type Credentials struct {
	Username      string
	Password      string
	SSHPrivateKey string
	SSHKnownHosts string
}

// Auth turns c into the go-git auth method for r; nil means anonymous.
// Errors wrap ErrInvalid and name the field at fault, never its value.
func (r Remote) Auth(c Credentials) (transport.AuthMethod, error) {
	if !r.SSH {
		if c.SSHPrivateKey != "" || c.SSHKnownHosts != "" {
			return nil, invalidf("credentials: an SSH key is given for a repository whose URL is not ssh:// or user@host:path")
		}
		user, pass := c.Username, c.Password
		if user == "" && pass == "" {
			user, pass = r.user, r.password
		}
		if user == "" && pass == "" {
			return nil, nil
		}
		if user == "" {
			// Token-only credentials: the servers that take tokens as the
			// password (GitHub, GitLab, Gitea) accept any non-empty user.
			user = "git"
		}
		return &githttp.BasicAuth{Username: user, Password: pass}, nil
	}
	if c.SSHPrivateKey == "" {
		return nil, invalidf("credentials.sshPrivateKey: required for the SSH URL %q", r.Redacted)
	}
	if strings.TrimSpace(c.SSHKnownHosts) == "" {
		// Without known hosts a man in the middle could serve any
		// manifests.
		return nil, invalidf("credentials.sshKnownHosts: required for the SSH URL %q; add the server's host keys (ssh-keyscan %s)", r.Redacted, r.host)
	}
	user := r.user
	if user == "" {
		user = c.Username
	}
	if user == "" {
		user = "git"
	}
	keys, err := gitssh.NewPublicKeys(user, []byte(c.SSHPrivateKey), c.Password)
	if err != nil {
		// The parse error names neither the key nor the passphrase.
		return nil, invalidf("credentials.sshPrivateKey: %v", err)
	}
	db, err := knownHostsDB(c.SSHKnownHosts)
	if err != nil {
		return nil, invalidf("credentials.sshKnownHosts: %v", err)
	}
	keys.HostKeyCallback = db.HostKeyCallback()
	// Offer only the key types known_hosts lists for this host, or the
	// server may present another type and fail a check it would pass.
	keys.HostKeyAlgorithms = db.HostKeyAlgorithms(net.JoinHostPort(r.host, r.port))
	return keys, nil
}

// hostKeyDB is the part of go-git's known_hosts database Auth uses.
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

// Secrets are the strings Scrub removes from error text for r and c, in the
// forms a URL may carry them: the passwords, the key, and the URL's user,
// which for HTTP is often a token ("https://TOKEN@host/repo").
func (r Remote) Secrets(c Credentials) []string {
	var out []string
	for _, v := range []string{c.Password, c.SSHPrivateKey, r.password} {
		if v != "" {
			out = append(out, v, url.PathEscape(v), url.QueryEscape(v))
		}
	}
	// Short user names ("git", "oauth2") are not tokens, and scrubbing them
	// would mangle the message.
	if len(r.user) >= 8 && !r.SSH {
		out = append(out, r.user, url.PathEscape(r.user), url.QueryEscape(r.user))
	}
	return out
}

// Scrub returns msg with rawURL replaced by its redacted form and every one
// of secrets by "[redacted]". go-git keeps passwords out of its own
// messages, but quotes servers' response bodies verbatim in some and
// net/http quotes URLs, so error text is scrubbed rather than trusted. The
// trailing ": " go-git leaves when a server gave no reason goes too.
func Scrub(msg, rawURL, redacted string, secrets []string) string {
	if rawURL != "" && rawURL != redacted {
		msg = strings.ReplaceAll(msg, rawURL, redacted)
	}
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return strings.TrimRight(strings.TrimSpace(msg), ": \t\r\n")
}

// Classify returns ErrAuth, ErrHostKey, ErrRepoNotFound or ErrObjectFormat
// if err from go-git says retrying cannot help until credentials, known
// hosts, the URL or the repository change, and nil otherwise (network,
// server errors, cancellation).
func Classify(err error) error {
	var keyErr *knownhosts.KeyError
	var revoked *knownhosts.RevokedError
	var unexpected *packp.ErrUnexpectedData
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil
	case errors.Is(err, transport.ErrAuthenticationRequired),
		errors.Is(err, transport.ErrAuthorizationFailed),
		errors.Is(err, transport.ErrInvalidAuthMethod):
		return ErrAuth
	case errors.As(err, &keyErr), errors.As(err, &revoked):
		return ErrHostKey
	case errors.Is(err, transport.ErrRepositoryNotFound):
		return ErrRepoNotFound
	case errors.As(err, &unexpected) && bytes.Contains(unexpected.Data, []byte("object-format=sha256")):
		// go-git read the first 40 of a 64-character object name and then
		// stumbled over the rest of the line: the server's capabilities,
		// which it left in the error, name the object format.
		return ErrObjectFormat
	}
	return nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}
