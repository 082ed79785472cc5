// Package server wires Drover's hub together and runs it: the store (an
// external or an embedded PostgreSQL), the CA and the credential key, the
// control logic (hub/control, which owns the in-memory fleet, the Git
// watcher and the rollout engine), the agent endpoint, the admin API and the
// dashboard, their listeners and TLS, and their lifetimes. It decides
// nothing about releases or rollouts. drover-hub's main only parses flags
// and calls Run; tests start a whole hub in-process with Start.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/agentapi"
	"github.com/drover-dev/drover/hub/control"
	"github.com/drover-dev/drover/hub/dashboard"
	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/gitwatch"
	"github.com/drover-dev/drover/hub/ownership"
	"github.com/drover-dev/drover/hub/pgserver"
	"github.com/drover-dev/drover/hub/pki"
	"github.com/drover-dev/drover/hub/replicas"
	"github.com/drover-dev/drover/hub/secrets"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/version"
	"github.com/drover-dev/drover/migrations"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// MaxMessageBytes bounds every gRPC message the hub receives.
const MaxMessageBytes = 4 << 20

// Hub is a running hub.
type Hub struct {
	cfg Config
	log *slog.Logger

	pg      *pgserver.Server // nil with an external database
	store   *store.Store
	members *replicas.Membership
	owner   *ownership.Keeper
	// agentsShed counts the agents this replica asked to reconnect to
	// another replica.
	agentsShed atomic.Int64
	ca         *pki.CA
	box        *secrets.Box
	fleet      *fleet.Fleet
	ctl        *control.Controller
	changes    *dashboard.Changes
	// listener hears what other replicas change in the store.
	listener *store.Listener
	statuses *store.StatusWriter
	agents   *agentapi.Server
	admin    *adminapi.Server
	gateway  *adminapi.Gateway
	dash     *dashboard.Dashboard

	grpcSrv  *grpc.Server
	httpSrv  *http.Server
	agentLis net.Listener
	httpLis  net.Listener
	// debugSrv serves net/http/pprof on --debug-addr; nil when that is off.
	debugSrv *http.Server
	debugLis net.Listener

	cancel context.CancelFunc
	group  *errgroup.Group
}

var _ adminapi.Hub = (*Hub)(nil)

// Start starts a hub and returns once it serves. The initial admin token,
// on first start, is written to DataDir/admin-token, whose path (never the
// token) is printed to out.
func Start(ctx context.Context, cfg Config, logger *slog.Logger, out io.Writer) (_ *Hub, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	// Traversable but not listable by others: when the hub runs as root,
	// the embedded PostgreSQL runs as an unprivileged user and must reach
	// its directory inside. Every secret in it is a 0600 file or sits in a
	// 0700 subdirectory.
	if err := os.MkdirAll(cfg.DataDir, 0o711); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	h := &Hub{cfg: cfg, log: logger}
	defer func() {
		if err != nil {
			h.closeResources()
		}
	}()

	dbURL := cfg.DatabaseURL
	if dbURL == "" {
		logger.Info("starting the embedded PostgreSQL", "dir", filepath.Join(cfg.DataDir, "postgres"))
		h.pg, err = pgserver.Start(ctx, pgserver.Options{Dir: filepath.Join(cfg.DataDir, "postgres"), Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("start the embedded PostgreSQL (or pass --database-url): %w", err)
		}
		if err := h.pg.EnsureDatabase(ctx, "drover"); err != nil {
			return nil, err
		}
		dbURL = h.pg.URL("drover")
	}
	if err := migrations.UpURL(ctx, dbURL, migrations.WithLogger(logger)); err != nil {
		return nil, fmt.Errorf("database: %w (is PostgreSQL running and --database-url right?)", err)
	}
	if h.store, err = store.Open(ctx, dbURL, logger, store.WithReplica(cfg.Replica)); err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	// Listening (not serving yet) before the replica records itself, so
	// that it records the addresses it serves on, ports chosen by the
	// system included.
	if h.agentLis, err = net.Listen("tcp", cfg.AgentAddr); err != nil {
		return nil, fmt.Errorf("listen on --agent-addr: %w", err)
	}
	if h.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("listen on --http-addr: %w", err)
	}
	// First after the store: a second process under this replica's name
	// must be refused before it does anything as that replica.
	if err := h.startMembership(ctx); err != nil {
		return nil, err
	}

	if cfg.CACertFile != "" {
		h.ca, err = pki.LoadCA(cfg.CACertFile, cfg.CAKeyFile)
	} else {
		h.ca, err = pki.LoadOrCreateCA(filepath.Join(cfg.DataDir, "pki"), logger)
	}
	if err != nil {
		return nil, fmt.Errorf("agent CA: %w", err)
	}
	serving, err := h.ca.LoadOrCreateServingCert(filepath.Join(cfg.DataDir, "pki"), cfg.Hostnames, logger)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	var keyFrom string
	if h.box, keyFrom, err = cfg.credentialKey(); err != nil {
		return nil, fmt.Errorf("credential key: %w", err)
	}
	logger.Info("credential key loaded", "key_id", h.box.KeyID(), "from", keyFrom)

	if err := h.initialAdminToken(ctx, out); err != nil {
		return nil, err
	}

	h.fleet = fleet.New(logger)
	h.changes = dashboard.NewChanges()
	h.owner = ownership.New(ownership.Config{
		Holder:  store.Holder{Replica: cfg.Replica, Instance: h.members.Instance()},
		Members: h.members, Store: h.store, Logger: logger,
	})
	if h.ctl, err = control.New(ctx, control.Config{
		Owner: h.owner,
		Store: h.store, Fleet: h.fleet, Secrets: h.box,
		Resolver:     gitwatch.NewResolver(filepath.Join(cfg.DataDir, "git-cache"), logger),
		PollInterval: cfg.PollInterval, OfflineTimeout: cfg.OfflineTimeout,
		EventRetention: cfg.EventRetention, Replica: cfg.Replica,
		Changed: h.changes.Notify, Logger: logger,
	}); err != nil {
		return nil, err
	}
	h.statuses = store.NewStatusWriter(h.store, logger, 0, 0, store.WithOnWritten(h.notify))
	h.agents = agentapi.New(agentapi.Config{
		Replica: cfg.Replica, PingInterval: cfg.PingInterval, MaxAdmissions: cfg.MaxAgentAdmissions,
		// Last-seen times are batched; a batch must reach the database
		// well within the offline timeout, or connected clusters would
		// flap offline when the timeout is short.
		LastSeenFlush: min(5*time.Second, cfg.OfflineTimeout/4),
	}, notifyingStore{h.store, h.notify}, h.ca, h.fleet, h.ctl, h.statuses, logger)
	h.listener = h.store.NewListener(replicaChanges{h})
	h.admin = adminapi.New(h.store, h.ctl, h, h.box, cfg.OfflineTimeout, logger)
	if h.dash, err = dashboard.New(dashboard.Config{Admin: h.admin, Store: h.store, Logger: logger, OfflineTimeout: cfg.OfflineTimeout, Changes: h.changes}); err != nil {
		return nil, err
	}

	h.grpcSrv = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{serving},
			// Register has no client certificate yet; Connect refuses
			// streams without a verified one.
			ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs:  h.ca.Pool(),
			MinVersion: tls.VersionTLS13,
		})),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		// Thousands of mostly idle agent connections: no per-connection
		// read buffer (the TLS connection under the framer buffers a
		// whole record already, so a bufio.Reader on top only pinned
		// 32 KiB per agent), and write buffers borrowed from a pool only
		// while a connection is writing.
		grpc.ReadBufferSize(0),
		grpc.SharedWriteBuffer(true),
		grpc.ChainUnaryInterceptor(adminapi.UnaryInterceptor(h.store)),
		// Agents behind NAT ping every 20-30 s to keep their mapping;
		// allow that, and close streams whose peer stopped answering.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second}),
	)
	droverv1.RegisterAgentServiceServer(h.grpcSrv, h.agents)
	droverv1.RegisterAdminServiceServer(h.grpcSrv, h.admin)

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.cancel = cancel
	if h.gateway, err = adminapi.NewGateway(runCtx, h.admin, h.store); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/api/", h.gateway)
	mux.HandleFunc("/healthz", h.healthz)
	mux.HandleFunc("/readyz", h.readyz)
	mux.Handle("/metrics", newHubMetrics(h.agents.Connected, h.statuses.Stats, h.store, replicaFigures{
		members:    h.members.Members,
		jobsHeld:   func() int { return len(h.owner.Held()) },
		listener:   h.listener.Stats,
		agentsShed: h.agentsShed.Load,
	}, cfg.OfflineTimeout, logger).handler())
	mux.Handle("/", h.dash)
	h.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// Open dashboard pages hold a live stream; end them so shutdown need
	// not wait for them.
	h.httpSrv.RegisterOnShutdown(h.dash.Close)

	if cfg.DebugAddr != "" {
		if h.debugLis, err = net.Listen("tcp", cfg.DebugAddr); err != nil {
			return nil, fmt.Errorf("listen on --debug-addr: %w", err)
		}
		h.debugSrv = &http.Server{Handler: debugMux(), ReadHeaderTimeout: 10 * time.Second}
	}

	g, gctx := errgroup.WithContext(runCtx)
	h.group = g
	if h.debugSrv != nil {
		g.Go(func() error {
			if err := h.debugSrv.Serve(h.debugLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		logger.Warn("serving Go profiles without authentication", "debug_addr", h.debugLis.Addr().String())
	}
	g.Go(func() error { return h.grpcSrv.Serve(h.agentLis) })
	g.Go(func() error {
		if err := h.httpSrv.Serve(h.httpLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return h.agents.Run(gctx) })
	g.Go(func() error { h.statuses.Run(gctx); return nil })
	g.Go(func() error { return h.ctl.Run(gctx) })
	g.Go(func() error { return h.runMembership(gctx) })
	g.Go(func() error { return h.owner.Run(gctx) })
	g.Go(func() error { h.rebalance(gctx); return nil })
	g.Go(func() error { return h.listener.Run(gctx) })
	logger.Info("hub started", "version", version.Version, "agent_addr", h.agentLis.Addr().String(), "http_addr", h.httpLis.Addr().String(), "replica", cfg.Replica)
	return h, nil
}

// Run starts a hub and serves until ctx ends.
func Run(ctx context.Context, cfg Config, logger *slog.Logger, out io.Writer) error {
	h, err := Start(ctx, cfg, logger, out)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-h.done():
	}
	return h.Close()
}

func (h *Hub) done() <-chan struct{} {
	ch := make(chan struct{})
	go func() { _ = h.group.Wait(); close(ch) }()
	return ch
}

// AgentAddr is the address the agent endpoint listens on.
func (h *Hub) AgentAddr() string { return h.agentLis.Addr().String() }

// HTTPAddr is the address of the JSON API.
func (h *Hub) HTTPAddr() string { return h.httpLis.Addr().String() }

// CACertPEM is the CA that signs agent certificates and the hub's serving
// certificate; agents trust it.
func (h *Hub) CACertPEM() []byte { return h.ca.CertPEM() }

// Store is the hub's store, for tests and tools.
func (h *Hub) Store() *store.Store { return h.store }

// Fleet is the hub's in-memory fleet, for reading: only the hub's
// control logic writes it.
func (h *Hub) Fleet() *fleet.Fleet { return h.fleet }

// Controller is the hub's control logic, for tests and tools that change
// the store directly and must tell it.
func (h *Hub) Controller() *control.Controller { return h.ctl }

// Members returns the names of the live hub replicas, sorted, this one
// included.
func (h *Hub) Members() []string { return h.members.Members() }

// Replica is this replica's name.
func (h *Hub) Replica() string { return h.cfg.Replica }

// Disconnect closes a cluster's stream on this replica.
func (h *Hub) Disconnect(cluster string, reason error) { h.agents.Disconnect(cluster, reason) }

// Shed ends up to n of the agent streams this replica holds, telling each
// agent to go to another replica after about hint (see agentapi.Server.Shed),
// and reports how many it ended. The metrics count them.
func (h *Hub) Shed(n int, hint time.Duration) int {
	shed := h.agents.Shed(n, hint)
	h.agentsShed.Add(int64(shed))
	return shed
}

// FlushStatuses writes pending statuses now.
func (h *Hub) FlushStatuses(ctx context.Context) error { return h.statuses.Flush(ctx) }

// Close stops serving and releases everything, the embedded PostgreSQL
// last.
func (h *Hub) Close() error {
	if h.grpcSrv != nil {
		// Stop, not GracefulStop: agent streams never end on their own, and
		// agents reconnect.
		h.grpcSrv.Stop()
	}
	if h.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = h.httpSrv.Shutdown(ctx)
		cancel()
	}
	if h.debugSrv != nil {
		// A CPU profile being taken would hold Shutdown for its duration.
		_ = h.debugSrv.Close()
	}
	if h.cancel != nil {
		h.cancel()
	}
	var err error
	if h.group != nil {
		err = h.group.Wait()
		if errors.Is(err, grpc.ErrServerStopped) {
			err = nil
		}
	}
	if h.statuses != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if ferr := h.statuses.Flush(ctx); ferr != nil {
			h.log.Warn("flush statuses at shutdown", "err", ferr)
		}
		cancel()
	}
	h.closeResources()
	return err
}

func (h *Hub) closeResources() {
	// Listeners opened before a failed Start; once serving, closing them
	// again is harmless.
	for _, l := range []net.Listener{h.agentLis, h.httpLis, h.debugLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	if h.gateway != nil {
		h.gateway.Close()
	}
	if h.members != nil {
		// Leaves the gossip and frees the replica name, so it needs the
		// store.
		_ = h.members.Close()
	}
	if h.store != nil {
		h.store.Close()
	}
	if h.pg != nil {
		if err := h.pg.Stop(); err != nil {
			h.log.Warn("stop the embedded PostgreSQL", "err", err)
		}
	}
}

// notify says that the fleet's state changed (a status written, an ACK or
// NACK, a connection, an event): the rollout engine steps at once rather than
// at its next tick, and open dashboard pages refresh. Both coalesce.
func (h *Hub) notify() {
	h.ctl.Poke()
	h.changes.Notify()
}

// replicaChanges is the hub's store.ChangeHandler: the Controller reloads
// what other replicas changed, and a stream this replica holds for a
// cluster another replica revoked or deleted is closed, as the admin API
// closes it on the replica that serves the request.
type replicaChanges struct{ h *Hub }

func (r replicaChanges) Changed(ctx context.Context, changes []store.Change) {
	r.h.ctl.Changed(ctx, changes)
	var clusters []string
	for _, ch := range changes {
		if ch.Kind == store.ChangeCluster {
			clusters = append(clusters, ch.Name)
		}
	}
	if len(clusters) > 0 {
		held := r.h.agents.Clusters()
		r.h.disconnectGone(ctx, slices.DeleteFunc(clusters, func(c string) bool { return !slices.Contains(held, c) }))
	}
}

func (r replicaChanges) Resync(ctx context.Context) {
	r.h.ctl.Resync(ctx)
	// One read for every stream held, rather than one per stream.
	cls, err := r.h.store.ListAllClusters(ctx)
	if err != nil {
		r.h.log.Warn("look up the clusters whose streams this replica holds", "err", err)
		return
	}
	revoked := make(map[string]bool, len(cls))
	for _, c := range cls {
		revoked[c.Name] = c.Revoked
	}
	for _, name := range r.h.agents.Clusters() {
		rev, found := revoked[name]
		r.h.disconnectIfGone(name, found, rev)
	}
}

// disconnectGone closes the streams of those clusters that the store says
// are revoked or deleted. A cluster it cannot look up keeps its stream:
// the next change or resync looks again.
func (h *Hub) disconnectGone(ctx context.Context, clusters []string) {
	for _, name := range clusters {
		_, revoked, err := h.store.ClusterCertSerial(ctx, name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			h.log.Warn("look up a cluster another replica changed", "cluster", name, "err", err)
			continue
		}
		h.disconnectIfGone(name, err == nil, revoked)
	}
}

// disconnectIfGone closes a cluster's stream unless the store has the
// cluster (found), unrevoked.
func (h *Hub) disconnectIfGone(name string, found, revoked bool) {
	switch {
	case !found:
		h.agents.Disconnect(name, errors.New("the cluster was deleted"))
	case revoked:
		h.agents.Disconnect(name, errors.New("the cluster's certificate was revoked"))
	}
}

// notifyingStore is the agent endpoint's store: connections, ACKs and
// agent events also tell open dashboard pages that something changed.
type notifyingStore struct {
	*store.Store
	notify func()
}

func (s notifyingStore) MarkConnected(ctx context.Context, name, replica, peerAddr string, facts *droverv1.ClusterFacts, now time.Time) error {
	defer s.notify()
	return s.Store.MarkConnected(ctx, name, replica, peerAddr, facts, now)
}

func (s notifyingStore) RecordAck(ctx context.Context, name, version, nackErr string, now time.Time) error {
	defer s.notify()
	return s.Store.RecordAck(ctx, name, version, nackErr, now)
}

func (s notifyingStore) AddEvent(ctx context.Context, e *droverv1.Event) error {
	defer s.notify()
	return s.Store.AddEvent(ctx, e)
}

func (h *Hub) initialAdminToken(ctx context.Context, out io.Writer) error {
	tok, _, err := h.store.CreateFirstAPIToken(ctx, "admin", adminapi.RoleAdmin, 0, time.Now())
	switch {
	case errors.Is(err, store.ErrConflict):
		return nil // tokens exist already
	case err != nil:
		return fmt.Errorf("create the initial admin token: %w", err)
	}
	path := filepath.Join(h.cfg.DataDir, "admin-token")
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return fmt.Errorf("write the initial admin token: %w", err)
	}
	// Only where it is: standard output ends up in container logs.
	fmt.Fprintf(out, "\nThe initial admin API token is in %s (mode 0600); sign in with:\n\n    droverctl login --server URL < %s\n\n", path, path)
	return nil
}

// debugMux serves the runtime's profiles on their own mux: importing
// net/http/pprof also registers them on http.DefaultServeMux, which the hub
// never serves, so they cannot leak onto the API listener.
func debugMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// DebugAddr is the address of the profiling listener, or "" when it is off.
func (h *Hub) DebugAddr() string {
	if h.debugLis == nil {
		return ""
	}
	return h.debugLis.Addr().String()
}

func (h *Hub) healthz(w http.ResponseWriter, r *http.Request) {
	st := h.Status(r.Context())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if st.GetState() != "ok" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, st.GetState())
	for _, p := range st.GetProblems() {
		fmt.Fprintln(w, p)
	}
}

// readyz answers 200 while this replica can serve: its database answers.
// Unlike /healthz it does not count a replica alone as a problem: the
// others may be down, and then it is the one that must serve. It is the
// readiness probe of deploy/hub; by the time the hub listens, it has
// claimed its name and made its first attempt to join the others.
func (h *Hub) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := h.store.Ping(ctx); err != nil {
		h.log.Debug("readiness check: database unreachable", "err", err)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: database unreachable")
		return
	}
	fmt.Fprintln(w, "ready")
}

// Status reports the hub's own health: degraded while the database does not
// answer, while agent streams stay up.
func (h *Hub) Status(ctx context.Context) *droverv1.HubStatus {
	st := &droverv1.HubStatus{Version: version.Version, State: "ok", Replica: h.cfg.Replica, ConnectedAgents: int32(h.agents.Connected())}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := h.store.Ping(ctx); err != nil {
		// Without the driver's error: it names the database's user, host
		// and database, and /healthz answers anyone. The log has it.
		st.State = "degraded"
		st.Problems = append(st.Problems, "database unreachable")
		h.log.Debug("health check: database unreachable", "err", err)
	}
	if len(h.cfg.Peers) > 0 && len(h.members.Members()) < 2 {
		st.State = "degraded"
		st.Problems = append(st.Problems, "not joined to the other replicas")
	}
	return st
}
