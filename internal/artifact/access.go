package artifact

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
)

// Access says how to reach one source: its stored credentials, the CA
// bundle it is trusted with, and whether plain HTTP is allowed.
type Access struct {
	// Username and Password are HTTP basic auth (a token goes in
	// Password). They are sent only over TLS and only to the source's own
	// host.
	Username, Password string
	// CAPEM holds PEM CA certificates trusted besides the system's.
	CAPEM []byte
	// Insecure allows plain HTTP; credentials are still never sent over
	// it.
	Insecure bool
}

func (a Access) hasCredentials() bool { return a.Username != "" || a.Password != "" }

// errPlainCredentials is the refusal to send credentials in the clear.
func errPlainCredentials(redacted string) error {
	return invalidf("%s: credentials are not sent over plain HTTP; use https://", redacted)
}

// httpClient returns a client trusting the system roots and a.CAPEM, which
// refuses redirects that downgrade to plain HTTP without Insecure, and
// drops credentials on any redirect to another host (net/http does) or to
// plain HTTP. Callers close its idle connections when done.
func (a Access) httpClient() (*http.Client, *http.Transport, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if len(a.CAPEM) > 0 && !pool.AppendCertsFromPEM(a.CAPEM) {
		return nil, nil, invalidf("credentials: ca_pem holds no PEM certificate")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	c := &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if req.URL.Scheme != "https" {
				if !a.Insecure {
					return invalidf("redirected to plain HTTP (%s); set insecure: true to allow it", gitremote.RedactURL(req.URL.String()))
				}
				if req.Header.Get("Authorization") != "" {
					return errPlainCredentials(gitremote.RedactURL(req.URL.String()))
				}
			}
			return nil
		},
	}
	return c, tr, nil
}

// checkHTTPURL accepts an https:// URL, or an http:// one with Insecure and
// no credentials. It returns the parsed URL.
func (a Access) checkHTTPURL(raw string) (*url.URL, error) {
	red := gitremote.RedactURL(raw)
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, invalidf("%q is not an http(s):// URL", red)
	}
	if u.User != nil {
		return nil, invalidf("%s: credentials go in the repository's stored credentials, never in the URL", red)
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "http":
		if !a.Insecure {
			return nil, invalidf("%s: http:// sends the chart in the clear; set insecure: true to allow it", red)
		}
		if a.hasCredentials() {
			return nil, errPlainCredentials(red)
		}
	default:
		return nil, invalidf("%s: only https:// (or http:// with insecure: true) reaches a Helm repository", red)
	}
	return u, nil
}

// sameOrigin reports whether two URLs have one scheme, host and port, the
// condition for sending a repository's credentials to a chart URL.
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host)
}

// transportError wraps a failure to talk to the server, explaining the one
// failure users can fix themselves: a server that speaks plain HTTP only.
// Network failures stay transient (retry.IsTransient judges them).
func transportError(what, redacted string, err error) error {
	// net/http reports a plain-HTTP answer to a TLS hello with this text
	// only; there is no type to test.
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return invalidf("%s from %s: the server answers plain HTTP only; set insecure: true to allow it (credentials are never sent over plain HTTP)", what, redacted)
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		// url.Error repeats the URL, which may be unredacted; keep the cause.
		err = uerr.Err
	}
	return fmt.Errorf("%s from %s: %w", what, redacted, markNetwork(err))
}

// markNetwork leaves err's own mark if it has one (an ErrInvalid from
// CheckRedirect), and otherwise lets retry.IsTransient judge its type.
func markNetwork(err error) error {
	var re *retry.Error
	if errors.As(err, &re) {
		return err
	}
	return retry.Mark(err, retry.IsTransient(err))
}
