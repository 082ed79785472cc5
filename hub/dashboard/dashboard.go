// Package dashboard serves Drover's web dashboard from the hub: the fleet
// overview, a page per cluster and per application, and the event history,
// rendered on the server with html/template from embedded templates and
// assets (no front-end build). Pages stay live through server-sent events:
// the hub calls Notify when anything changes, the dashboard sends every
// open page a coalesced "changed" tick, and the page's small script
// re-fetches its own main content and morphs the page into it, changing
// only what changed (elements keep their identity by id or data-key).
//
// People sign in with an API token; the browser holds only an opaque
// session id. Every POST needs the session's CSRF token, and actions need
// the admin role.
package dashboard

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/klauspost/compress/gzhttp"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/rollout"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Admin is the part of the admin API the dashboard reads and acts through;
// *adminapi.Server implements it. Calls carry the signed-in principal.
type Admin interface {
	GetCluster(ctx context.Context, req *droverv1.GetClusterRequest) (*droverv1.GetClusterResponse, error)
	GetApplication(ctx context.Context, req *droverv1.GetApplicationRequest) (*droverv1.GetApplicationResponse, error)
	ListEvents(ctx context.Context, req *droverv1.ListEventsRequest) (*droverv1.ListEventsResponse, error)
	RefreshApplication(ctx context.Context, req *droverv1.RefreshApplicationRequest) (*droverv1.RefreshApplicationResponse, error)
	GetRollout(ctx context.Context, req *droverv1.GetRolloutRequest) (*droverv1.GetRolloutResponse, error)
	ControlRollout(ctx context.Context, req *droverv1.ControlRolloutRequest) (*droverv1.ControlRolloutResponse, error)
	ListReplicas(ctx context.Context, req *droverv1.ListReplicasRequest) (*droverv1.ListReplicasResponse, error)
}

var _ Admin = (*adminapi.Server)(nil)

// Store is what the dashboard reads directly, where the admin API has no
// query cheap enough for a fleet-wide view; *store.Store implements it.
type Store interface {
	adminapi.TokenAuthenticator
	ListClusters(ctx context.Context, sel labels.Selector, pageSize int, pageToken string) ([]*droverv1.Cluster, string, error)
	ClusterStatusCounts(ctx context.Context, names []string) (map[string]*store.StatusCounts, error)
	OverviewClusters(ctx context.Context, sel labels.Selector) ([]store.ClusterOverview, error)
	ClusterLabelKeys(ctx context.Context) (clusters int, keys []string, err error)
	ApplicationStatusCounts(ctx context.Context) (map[string]*store.StatusCounts, error)
	ListApplications(ctx context.Context) ([]*droverv1.Application, error)
	CurrentReleases(ctx context.Context) (map[string]*droverv1.Release, error)
	// ListRolloutStates feeds the overview's rollout counts and approval
	// banners: one query for every application, where GetRollout would be
	// one call each.
	ListRolloutStates(ctx context.Context) (map[string]rollout.State, error)
}

var _ Store = (*store.Store)(nil)

// Config configures a Dashboard.
type Config struct {
	Admin  Admin
	Store  Store
	Logger *slog.Logger
	// OfflineTimeout is how long after its last heartbeat a cluster is
	// shown offline; the hub's --offline-timeout.
	OfflineTimeout time.Duration
	// SessionTTL is how long a sign-in lasts; 0 means 12 hours.
	SessionTTL time.Duration
	// SecureCookies marks cookies Secure even on plain HTTP, for a hub
	// behind a TLS-terminating proxy. Requests that arrive over TLS always
	// get Secure cookies.
	SecureCookies bool
	// Now is the clock; nil means time.Now. Tests fix it.
	Now func() time.Time
	// RefreshInterval is how often open pages re-render with no change
	// (relative times, clusters going offline by timeout); 0 means 30s.
	RefreshInterval time.Duration
	// Changes carries the hub's "something changed" to open pages; nil
	// makes one. Made before the dashboard, it can be handed to the parts
	// of the hub that report changes when they are built.
	Changes *Changes
}

// Changes tells open pages that something changed. Notify never blocks
// and may be called from any goroutine, as often as the caller likes:
// pages hear of changes at most about once a second.
type Changes struct{ b *broker }

// NewChanges returns a Changes for one Dashboard's Config.
func NewChanges() *Changes { return &Changes{b: newBroker(time.Second)} }

// Notify tells open pages that something changed.
func (c *Changes) Notify() { c.b.notify() }

// Dashboard is the dashboard's HTTP handler.
type Dashboard struct {
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	handler  http.Handler // the routes, behind compression
	pages    map[string]*template.Template
	sessions *sessions
	live     *broker
	assetVer string
}

var _ http.Handler = (*Dashboard)(nil)

// New returns the dashboard.
func New(cfg Config) (*Dashboard, error) {
	if cfg.Admin == nil || cfg.Store == nil {
		return nil, errors.New("dashboard: Admin and Store are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OfflineTimeout <= 0 {
		cfg.OfflineTimeout = 90 * time.Second
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 30 * time.Second
	}
	if cfg.Changes == nil {
		cfg.Changes = NewChanges()
	}
	d := &Dashboard{
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.Now,
		sessions: newSessions(cfg.SessionTTL, cfg.Now),
		live:     cfg.Changes.b,
	}
	var err error
	if d.assetVer, err = assetVersion(); err != nil {
		return nil, err
	}
	if d.pages, err = parsePages(d.funcs()); err != nil {
		return nil, err
	}
	d.routes()
	return d, nil
}

func (d *Dashboard) routes() {
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	m := http.NewServeMux()
	m.Handle("GET /static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Asset URLs carry a content hash, so they may be cached for long.
		w.Header().Set("Cache-Control", "public, max-age=86400")
		files.ServeHTTP(w, r)
	}))
	m.HandleFunc("GET /favicon.ico", http.NotFound)
	m.HandleFunc("GET /login", d.loginForm)
	m.HandleFunc("POST /login", d.login)
	m.Handle("POST /logout", d.action(anyRole, d.logout))
	m.Handle("GET /{$}", d.page(d.overview))
	m.Handle("GET /clusters/{name}", d.page(d.cluster))
	m.Handle("GET /apps", d.page(d.apps))
	m.Handle("GET /apps/{name}", d.page(d.app))
	m.Handle("GET /events", d.page(d.events))
	m.Handle("GET /replicas", d.page(d.replicas))
	m.Handle("GET /replicas/{name}", d.page(d.replica))
	m.Handle("GET /search", d.authed(d.search))
	m.Handle("GET /live", d.authed(d.stream))
	m.Handle("POST /apps/{name}/refresh", d.action(adminapi.RoleAdmin, d.refresh))
	m.Handle("POST /apps/{name}/rollout/{op}", d.action(adminapi.RoleAdmin, d.controlRollout))
	m.Handle("/", d.page(func(r *http.Request) (view, error) { return view{}, notFound("page %s", r.URL.Path) }))
	// Pages compress well (the overview of 5,000 clusters by about ten
	// times). The live stream stays uncompressed, so every event leaves at
	// once. Session cookies are SameSite=Strict, so a page fetched for
	// another site carries no CSRF token to guess by length (BREACH); the
	// jitter hides the exact compressed size all the same.
	gz, err := gzhttp.NewWrapper(
		gzhttp.ExceptContentTypes([]string{"text/event-stream"}),
		gzhttp.RandomJitter(32, 0, false),
	)
	if err != nil {
		panic(err) // the options are fixed at build time
	}
	d.handler = gz(m)
}

// ServeHTTP serves the dashboard.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	d.handler.ServeHTTP(w, r)
}

// Notify tells open pages that something changed, as Config.Changes does.
func (d *Dashboard) Notify() { d.live.notify() }

// Close ends the live streams of open pages (at hub shutdown, so the HTTP
// server's graceful shutdown need not wait for them).
func (d *Dashboard) Close() { d.live.close() }
