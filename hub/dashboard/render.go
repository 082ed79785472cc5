package dashboard

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/internal/artifact"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// view is what a page handler hands the templates.
type view struct {
	Title string
	// Nav names the top-bar entry to mark current.
	Nav  string
	Data any
	// Code is the HTTP status when not 200: a page that explains bad input
	// (an invalid selector) still renders, with 400.
	Code int
}

// frame is the whole template input: the page's view plus what every page
// shows.
type frame struct {
	view
	Principal adminapi.Principal
	CSRF      string
	AssetVer  string
	Fragment  bool
	Query     string
	Code      int
}

// pageError is an error a page shows to the user with an HTTP status.
type pageError struct {
	code int
	msg  string
}

func (e *pageError) Error() string { return e.msg }

func notFound(format string, args ...any) error {
	return &pageError{code: http.StatusNotFound, msg: fmt.Sprintf(format, args...) + " does not exist"}
}

func badInput(format string, args ...any) error {
	return &pageError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// fromAdmin turns an admin API error into what the page shows: its own
// message for the user's mistakes, a generic one for the hub's.
func fromAdmin(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.NotFound:
		return &pageError{code: http.StatusNotFound, msg: strings.TrimSuffix(st.Message(), ": not found") + " does not exist"}
	case codes.InvalidArgument, codes.FailedPrecondition:
		return &pageError{code: http.StatusBadRequest, msg: st.Message()}
	case codes.PermissionDenied:
		return &pageError{code: http.StatusForbidden, msg: st.Message()}
	}
	return err
}

var pageNames = []string{"overview", "cluster", "apps", "app", "events", "replicas", "replica", "login", "error"}

func parsePages(funcs template.FuncMap) (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("parse dashboard layout: %w", err)
	}
	pages := make(map[string]*template.Template, len(pageNames))
	for _, name := range pageNames {
		t, err := template.Must(base.Clone()).ParseFS(templateFS, "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parse dashboard page %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// assetVersion is a hash of the embedded assets, put into their URLs so
// browsers may cache them until they change.
func assetVersion() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(staticFS, "static", func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(path)
		h.Write([]byte(path))
		h.Write(b)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hash dashboard assets: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// page serves a signed-in page: the whole document, or with ?fragment=1
// only its main content, which the live script swaps in.
func (d *Dashboard) page(fn func(r *http.Request) (view, error)) http.Handler {
	return d.authed(func(w http.ResponseWriter, r *http.Request) {
		name := ""
		v, err := fn(r)
		if err == nil {
			name = v.Nav
		}
		if err != nil {
			var pe *pageError
			if !errors.As(err, &pe) {
				d.log.Error("dashboard page", "path", r.URL.Path, "err", err)
				pe = &pageError{code: http.StatusInternalServerError, msg: "The hub could not load this page; it logged why. Try again shortly."}
			}
			d.renderError(w, r, pe.code, pe.msg)
			return
		}
		code := http.StatusOK
		if v.Code != 0 {
			code = v.Code
		}
		d.render(w, r, code, name, v)
	})
}

func (d *Dashboard) renderError(w http.ResponseWriter, r *http.Request, code int, msg string) {
	title := http.StatusText(code)
	if code == http.StatusNotFound {
		title = "Not found"
	}
	d.render(w, r, code, "error", view{Title: title, Data: msg})
}

func (d *Dashboard) render(w http.ResponseWriter, r *http.Request, code int, name string, v view) {
	f := frame{view: v, AssetVer: d.assetVer, Fragment: r.URL.Query().Get("fragment") != "", Code: code}
	if s := sessionFrom(r.Context()); s != nil {
		f.Principal, f.CSRF = s.principal, s.csrf
	}
	f.Query = r.URL.Query().Get("q")
	tmpl := "layout"
	if f.Fragment {
		tmpl = "main"
	}
	var buf bytes.Buffer
	if err := d.pages[name].ExecuteTemplate(&buf, tmpl, f); err != nil {
		d.log.Error("render dashboard page", "page", name, "err", err)
		http.Error(w, "the page could not be rendered; the hub logged why", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// State words and glyphs. State is never shown by colour alone: every
// badge and tile carries a glyph and, where there is room, the word.
type state struct {
	Class, Glyph, Word string
}

var (
	stateHealthy     = state{"ok", "✓", "Healthy"}
	stateProgressing = state{"prog", "◐", "Progressing"}
	stateDegraded    = state{"bad", "✕", "Degraded"}
	stateMissing     = state{"warn", "!", "Missing"}
	stateUnknown     = state{"unk", "?", "Unknown"}
	stateSuspended   = state{"susp", "‖", "Suspended"}
	stateOffline     = state{"off", "○", "Offline"}
	stateOnline      = state{"ok", "●", "Online"}
	stateEmpty       = state{"none", "·", "No applications"}
)

func healthState(h droverv1.Health) state {
	switch h {
	case droverv1.Health_HEALTH_HEALTHY:
		return stateHealthy
	case droverv1.Health_HEALTH_PROGRESSING:
		return stateProgressing
	case droverv1.Health_HEALTH_DEGRADED:
		return stateDegraded
	case droverv1.Health_HEALTH_MISSING:
		return stateMissing
	case droverv1.Health_HEALTH_SUSPENDED:
		return stateSuspended
	}
	return stateUnknown
}

func syncState(s droverv1.SyncState) state {
	switch s {
	case droverv1.SyncState_SYNC_STATE_SYNCED:
		return state{"ok", "✓", "Synced"}
	case droverv1.SyncState_SYNC_STATE_OUT_OF_SYNC:
		return state{"warn", "≠", "OutOfSync"}
	case droverv1.SyncState_SYNC_STATE_APPLYING:
		return state{"prog", "↻", "Applying"}
	case droverv1.SyncState_SYNC_STATE_FAILED:
		return state{"bad", "✕", "Failed"}
	}
	return stateUnknown
}

// severity orders healths from best to worst, so the worst of several is
// the one a tile shows.
func severity(h droverv1.Health) int {
	switch h {
	case droverv1.Health_HEALTH_HEALTHY:
		return 0
	case droverv1.Health_HEALTH_SUSPENDED:
		return 1
	case droverv1.Health_HEALTH_PROGRESSING:
		return 2
	case droverv1.Health_HEALTH_DEGRADED:
		return 5
	case droverv1.Health_HEALTH_MISSING:
		return 4
	}
	return 3 // unknown, unspecified
}

// worst is the worst health with a non-zero count; ok is false when there
// are none.
func worst(counts map[droverv1.Health]int32) (h droverv1.Health, ok bool) {
	best := -1
	for k, n := range counts {
		if n > 0 && severity(k) > best {
			best, h, ok = severity(k), k, true
		}
	}
	return h, ok
}

func (d *Dashboard) online(c *droverv1.Cluster) bool {
	if c.GetLastSeen() == nil {
		return false
	}
	return d.onlineAt(c.GetRevoked(), c.GetLastSeen().AsTime())
}

// onlineAt is online for a cluster last seen at lastSeen (zero: never).
func (d *Dashboard) onlineAt(revoked bool, lastSeen time.Time) bool {
	return !revoked && !lastSeen.IsZero() && d.now().Sub(lastSeen) < d.cfg.OfflineTimeout
}

// ago says how long before now t was, in words.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < 10*time.Second:
		return "just now"
	case d < time.Minute:
		s = fmt.Sprintf("%d s", int(d/time.Second))
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d/time.Hour))
	default:
		s = fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// forgeCommitURL links a commit on the forges whose URL scheme is known;
// "" otherwise. Credentials in the repository URL never reach the link.
func forgeCommitURL(repoURL, commit string) string {
	if commit == "" || artifact.IsRevision(commit) {
		return ""
	}
	host, path := "", ""
	if u, err := url.Parse(repoURL); err == nil && u.Host != "" {
		host, path = u.Hostname(), u.Path
	} else if at := strings.Index(repoURL, "@"); at >= 0 && strings.Contains(repoURL[at:], ":") {
		// scp-like SSH: git@github.com:owner/repo.git
		rest := repoURL[at+1:]
		i := strings.Index(rest, ":")
		host, path = rest[:i], "/"+rest[i+1:]
	}
	host = strings.ToLower(host)
	switch {
	case host == "github.com", host == "gitlab.com", host == "codeberg.org", strings.HasPrefix(host, "gitea."), strings.HasPrefix(host, "forgejo."):
	default:
		return ""
	}
	path = strings.TrimSuffix(strings.Trim(path, "/"), ".git")
	if strings.Count(path, "/") < 1 || strings.ContainsAny(path, "?#") {
		return ""
	}
	return "https://" + host + "/" + path + "/commit/" + url.PathEscape(commit)
}

// shortSHA is a Git SHA's first 10 characters, or a Helm or OCI
// revision's version and short digest.
func shortSHA(c string) string { return artifact.ShortCommit(c, 10) }

// chips renders labels in a stable order.
type chip struct{ Key, Value string }

func sortedLabels(m map[string]string) []chip {
	out := make([]chip, 0, len(m))
	for k, v := range m {
		out = append(out, chip{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func (d *Dashboard) funcs() template.FuncMap {
	return template.FuncMap{
		"health":   healthState,
		"sync":     syncState,
		"labels":   sortedLabels,
		"short":    shortSHA,
		"forge":    forgeCommitURL,
		"pathpart": url.PathEscape,
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return ago(d.now(), t)
		},
		"abs": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05 MST")
		},
		"pbtime": func(ts interface{ AsTime() time.Time }) time.Time {
			if ts == nil {
				return time.Time{}
			}
			t := ts.AsTime()
			if t.Unix() == 0 {
				return time.Time{}
			}
			return t
		},
		"kindClass": func(kind string) string {
			switch {
			case strings.Contains(kind, "fail"), strings.Contains(kind, "nack"), strings.Contains(kind, "revoked"), strings.Contains(kind, "deleted"):
				return "bad"
			}
			return ""
		},
		"state":        func(class, glyph, word string) state { return state{class, glyph, word} },
		"cphase":       clusterPhaseState,
		"replicaState": replicaState,
		"int":          func(n int32) int { return int(n) },
		"plural": func(n int, one, many string) string {
			if n == 1 {
				return one
			}
			return many
		},
	}
}
