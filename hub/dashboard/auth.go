package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-dev/drover/hub/adminapi"
)

// Cookie names. The session cookie holds an opaque random id; the token a
// person signed in with never leaves the login request.
const (
	sessionCookie = "drover_session"
	loginCookie   = "drover_login"
	csrfField     = "csrf"
	// maxSessions bounds the in-memory session table against a flood of
	// sign-ins; the oldest session is dropped past it.
	maxSessions = 10000
)

// session is one signed-in browser.
type session struct {
	principal adminapi.Principal
	csrf      string
	expires   time.Time
}

// sessions maps session ids to sessions, in memory: a hub restart signs
// everyone out, which is acceptable for a dashboard and keeps no secret on
// disk.
type sessions struct {
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex // guards the field below
	byID map[string]*session
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, byID: map[string]*session{}}
}

func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

func (ss *sessions) create(p adminapi.Principal) (string, *session) {
	id := randomID()
	s := &session{principal: p, csrf: randomID(), expires: ss.now().Add(ss.ttl)}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.pruneLocked()
	ss.byID[id] = s
	return id, s
}

// pruneLocked drops expired sessions, and the one expiring first when the
// table is full.
func (ss *sessions) pruneLocked() {
	now := ss.now()
	var oldestID string
	var oldest time.Time
	for id, s := range ss.byID {
		if now.After(s.expires) {
			delete(ss.byID, id)
			continue
		}
		if oldestID == "" || s.expires.Before(oldest) {
			oldestID, oldest = id, s.expires
		}
	}
	if len(ss.byID) >= maxSessions && oldestID != "" {
		delete(ss.byID, oldestID)
	}
}

func (ss *sessions) get(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.byID[id]
	if s == nil {
		return nil
	}
	if ss.now().After(s.expires) {
		delete(ss.byID, id)
		return nil
	}
	return s
}

func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byID, id)
}

type sessionKey struct{}

// sessionFrom returns the request's session, set by authed.
func sessionFrom(ctx context.Context) *session {
	s, _ := ctx.Value(sessionKey{}).(*session)
	return s
}

func (d *Dashboard) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: name, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || d.cfg.SecureCookies,
	}
}

// authed lets requests with a live session through, with the session and
// its principal in the context. Without one, pages redirect to the login
// form and everything else (page fragments, the live stream) gets 401.
func (d *Dashboard) authed(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s *session
		if c, err := r.Cookie(sessionCookie); err == nil {
			s = d.sessions.get(c.Value)
		}
		if s == nil {
			if r.Method == http.MethodGet && r.URL.Query().Get("fragment") == "" && r.URL.Path != "/live" {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "not signed in: sign in at /login", http.StatusUnauthorized)
			return
		}
		ctx := context.WithValue(r.Context(), sessionKey{}, s)
		ctx = adminapi.WithPrincipal(ctx, s.principal)
		next(w, r.WithContext(ctx))
	})
}

// anyRole lets every signed-in role act (signing out).
const anyRole = ""

// action guards a POST: a live session, the session's CSRF token in the
// form (compared in constant time), and the role. It is the one gate
// every button of the dashboard goes through.
func (d *Dashboard) action(role string, next http.HandlerFunc) http.Handler {
	return d.authed(func(w http.ResponseWriter, r *http.Request) {
		s := sessionFrom(r.Context())
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		got := r.PostFormValue(csrfField)
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
			d.renderError(w, r, http.StatusForbidden, "This form has expired or did not come from this dashboard (CSRF check failed). Reload the page and try again.")
			return
		}
		if role != anyRole && s.principal.Role != role {
			d.renderError(w, r, http.StatusForbidden, "Your token's role ("+s.principal.Role+") may look but not act; sign in with an admin token to do this.")
			return
		}
		next(w, r)
	})
}

// safeNext returns next when it is a path on this site, else "/": the
// login form must not redirect people elsewhere.
func safeNext(next string) string {
	// Browsers drop tabs and newlines from a Location and read a backslash
	// as a slash, so "/\t/evil.example" or "/\\evil.example" would lead
	// off-site: refuse them outright, then accept only a path.
	if strings.ContainsFunc(next, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
		return "/"
	}
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") {
		return "/"
	}
	if u, err := url.Parse(next); err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" {
		return "/"
	}
	return next
}

func (d *Dashboard) loginForm(w http.ResponseWriter, r *http.Request) {
	d.showLogin(w, r, http.StatusOK, "")
}

func (d *Dashboard) showLogin(w http.ResponseWriter, r *http.Request, code int, problem string) {
	// A login form has no session yet; a cookie set with the form and
	// echoed in a hidden field keeps other sites from signing a browser in
	// to an account of theirs (login CSRF).
	// An existing nonce is kept: a second form (another tab, or the
	// browser's favicon request bounced here) must not void the first.
	nonce := randomID()
	if c, err := r.Cookie(loginCookie); err == nil && len(c.Value) == len(nonce) {
		nonce = c.Value
	}
	http.SetCookie(w, d.cookie(r, loginCookie, nonce, 600))
	d.render(w, r, code, "login", view{Title: "Sign in", Data: loginData{Next: safeNext(r.FormValue("next")), Nonce: nonce, Problem: problem}})
}

type loginData struct {
	Next, Nonce, Problem string
}

func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	nonce := r.PostFormValue(csrfField)
	c, err := r.Cookie(loginCookie)
	if err != nil || nonce == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(nonce)) != 1 {
		d.showLogin(w, r, http.StatusForbidden, "The sign-in form expired; try again.")
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	p, err := adminapi.Authenticate(r.Context(), d.cfg.Store, token)
	if err != nil {
		code, msg := http.StatusUnauthorized, "That token was not accepted: it is unknown, expired or deleted. An admin creates one with `droverctl apitoken create NAME --role viewer`."
		switch status.Code(err) {
		case codes.Unauthenticated:
			if token == "" {
				msg = "Paste an API token to sign in."
			}
		default:
			code, msg = http.StatusServiceUnavailable, "The hub could not check the token just now; try again."
			d.log.Warn("dashboard sign-in", "err", err)
		}
		d.showLogin(w, r, code, msg)
		return
	}
	id, _ := d.sessions.create(p)
	http.SetCookie(w, d.cookie(r, loginCookie, "", -1))
	http.SetCookie(w, d.cookie(r, sessionCookie, id, int(d.cfg.SessionTTL/time.Second)))
	d.log.Info("dashboard sign-in", "name", p.Name, "role", p.Role)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		d.sessions.remove(c.Value)
	}
	http.SetCookie(w, d.cookie(r, sessionCookie, "", -1))
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
