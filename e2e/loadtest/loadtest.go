// Package loadtest simulates a fleet of Drover agents in one process, to
// measure and check a hub at scale. Every simulated agent is what a real
// one is on the wire: it registers through a join token with its own key and
// CSR, holds its own mutually authenticated gRPC connection, says Hello,
// answers every assignment with an ACK or a NACK after a simulated apply,
// reports the status of each assigned application with a configurable
// number of resources, resends every status it holds at the start of each
// new stream (as drover-agent does, so a hub that lost them gets them
// back), and heartbeats. It records when each assignment
// version arrived, so callers can compute fan-out latencies and check that
// nothing was lost or sent twice. A share of the agents can instead play
// a misbehaving fleet (Mode): oversized and malformed messages, never
// answering, reconnecting in a tight loop, flooding status.
//
// Identities outlive connections: a fleet registered once (Register) can
// be connected again and again (Connect), to hubs restarted on the same
// database, which is how BenchmarkHub measures 10,000 agents without
// registering them for every figure.
//
// drover-loadtest (e2e/cmd/drover-loadtest) runs it against a hub by
// address; the tests run it against an in-process hub, the benchmarks
// against a drover-hub process.
package loadtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mathrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/agent/hubclient"
	"github.com/drover-dev/drover/internal/backoff"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Config describes the simulated fleet. Zero values take the defaults.
type Config struct {
	// HubAddr is the hub's agent endpoint, host:port: the one replica of
	// HubAddrs when that is empty.
	HubAddr string
	// HubAddrs are the agent endpoints of the hub's replicas. The i-th
	// agent starts on HubAddrs[i mod n], which spreads the fleet over
	// them, and, as drover-agent does, moves on whenever a stream ends or
	// cannot be made: after a stream that held, to the replica it left
	// longest ago (hubclient.Successor), else to the next one.
	HubAddrs []string
	// ServerName is the name the hub's serving certificate is checked
	// against; empty means the host of the first hub address.
	ServerName string
	// CAPEM is the hub's CA certificate, which agents trust before they
	// register (the CA that signs their identities comes with it).
	CAPEM []byte
	// JoinToken registers every agent, so it must be reusable.
	JoinToken string
	// Agents is how many agents Start registers and connects.
	Agents int
	// NamePrefix starts every cluster name: "<prefix>-00042". Runs against
	// one hub need different prefixes, since a name registers once.
	NamePrefix string
	// ConnectRate bounds new registrations and streams per second across
	// the fleet, so that starting 10,000 agents measures the hub's steady
	// state rather than a self-inflicted stampede.
	ConnectRate float64
	// Parallel bounds registrations in flight.
	Parallel int
	// Behaviour is how the agents act once connected.
	Behaviour
}

// Behaviour is how connected agents act. A fleet registered once can
// connect again with another Behaviour.
type Behaviour struct {
	// ResourcesPerApp is how many resources each application status lists.
	ResourcesPerApp int
	// Heartbeat is each agent's heartbeat interval (jittered ±10%). The
	// first heartbeat of a stream comes at a uniformly random point of the
	// first interval, so a fleet connected in a burst still spreads its
	// heartbeats as agents started at random times do.
	Heartbeat time.Duration
	// ApplyLatency is how long a simulated apply takes (jittered ±20%).
	ApplyLatency time.Duration
	// FailRate is the probability, 0 to 1, that an apply fails: the agent
	// NACKs the assignment and reports the applications failed.
	FailRate float64
	// StatusInterval, when positive, makes well-behaved agents send a
	// fresh full status report of their applications this often
	// (jittered ±10%), numbered in each status message ("report N"), to
	// load status ingest, unless the fleet's periodic reports are paused
	// (Fleet.PauseReports). Zero reports only after each apply, as an
	// idle real agent does.
	StatusInterval time.Duration
	// Misbehaving is the share, 0 to 1, of agents that play one of Modes
	// instead of the protocol. They are spread evenly over the fleet and
	// take the modes in turn.
	Misbehaving float64
	// Modes are the misbehaviours to play; empty means every Mode.
	Modes []Mode
}

// Mode is a way a misbehaving agent breaks the protocol.
type Mode string

// The misbehaviours. Each still registers and holds a valid identity: the
// hub must contain them without harming the other agents.
const (
	// WellBehaved speaks the protocol as a real agent does.
	WellBehaved Mode = ""
	// Oversized sends a status report larger than any hub accepts.
	Oversized Mode = "oversized"
	// Malformed sends a status for applications it was not assigned, with
	// unknown enum values, an answer with a wrong nonce, then bytes that
	// are no protobuf at all.
	Malformed Mode = "malformed"
	// NeverAck receives assignments and never answers or reports.
	NeverAck Mode = "never-ack"
	// ReconnectLoop opens a new connection, says Hello, waits for the
	// hub's first answer (its assignment, or a refusal) and drops it, in a
	// tight loop that nothing ends but the fleet's Disconnect: a failed
	// dial is counted and tried again.
	ReconnectLoop Mode = "reconnect-loop"
	// StatusFlood answers assignments and then, once it has applications,
	// sends full status reports of them as fast as the stream takes them.
	StatusFlood Mode = "status-flood"
)

// Modes lists every misbehaviour.
var Modes = []Mode{Oversized, Malformed, NeverAck, ReconnectLoop, StatusFlood}

// OversizedBytes is the size of an Oversized agent's status: above the
// hub's 4 MiB receive limit.
const OversizedBytes = 5 << 20

// reconnectLoopPause is the ReconnectLoop agents' pause between
// connections: short enough to be a storm, long enough that the load tool
// does not spend the machine on it.
const reconnectLoopPause = 100 * time.Millisecond

func (c *Config) setDefaults() {
	if c.NamePrefix == "" {
		c.NamePrefix = "load"
	}
	if c.ConnectRate <= 0 {
		c.ConnectRate = 200
	}
	if c.Parallel <= 0 {
		c.Parallel = 32
	}
	if len(c.HubAddrs) == 0 && c.HubAddr != "" {
		c.HubAddrs = []string{c.HubAddr}
	}
	if c.HubAddr == "" && len(c.HubAddrs) > 0 {
		c.HubAddr = c.HubAddrs[0]
	}
	if c.ServerName == "" {
		if host, _, err := net.SplitHostPort(c.HubAddr); err == nil {
			c.ServerName = host
		}
	}
	c.Behaviour.setDefaults()
}

func (b *Behaviour) setDefaults() {
	if b.Heartbeat <= 0 {
		b.Heartbeat = 30 * time.Second
	}
	if len(b.Modes) == 0 {
		b.Modes = Modes
	}
}

// Validate reports every problem, naming the field.
func (c *Config) Validate() error {
	var errs []error
	if len(c.HubAddrs) == 0 {
		errs = append(errs, errors.New("hub address: required, host:port"))
	}
	for _, addr := range c.HubAddrs {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("hub address %q: want host:port: %w", addr, err))
		}
	}
	if len(c.CAPEM) == 0 || !x509.NewCertPool().AppendCertsFromPEM(c.CAPEM) {
		errs = append(errs, errors.New("hub CA: want a PEM certificate (the hub's ca.crt)"))
	}
	if c.JoinToken == "" {
		errs = append(errs, errors.New("join token: required; create a reusable one with droverctl"))
	}
	if c.Agents < 0 {
		errs = append(errs, fmt.Errorf("agents: %d, want 0 or more", c.Agents))
	}
	return errors.Join(append(errs, c.Behaviour.Validate())...)
}

// Validate reports every problem, naming the field.
func (b *Behaviour) Validate() error {
	var errs []error
	if b.ResourcesPerApp < 0 {
		errs = append(errs, fmt.Errorf("resources per app: %d, want 0 or more", b.ResourcesPerApp))
	}
	if b.ApplyLatency < 0 {
		errs = append(errs, fmt.Errorf("apply latency: %v, want 0 or more", b.ApplyLatency))
	}
	if b.FailRate < 0 || b.FailRate > 1 {
		errs = append(errs, fmt.Errorf("fail rate: %v, want 0 to 1", b.FailRate))
	}
	if b.StatusInterval < 0 {
		errs = append(errs, fmt.Errorf("status interval: %v, want 0 (after applies only) or more", b.StatusInterval))
	}
	if b.Misbehaving < 0 || b.Misbehaving > 1 {
		errs = append(errs, fmt.Errorf("misbehaving: %v, want a share from 0 to 1", b.Misbehaving))
	}
	for i, m := range b.Modes {
		if !slices.Contains(Modes, m) {
			errs = append(errs, fmt.Errorf("modes[%d]: %q, want one of %v", i, m, Modes))
		}
	}
	return errors.Join(errs...)
}

// mode is the Mode of the i-th agent: agents whose index carries the
// running count of misbehaving ones past an integer misbehave, which spreads
// them evenly over any prefix of the fleet.
func (b *Behaviour) mode(i int) Mode {
	if b.Misbehaving <= 0 || len(b.Modes) == 0 {
		return WellBehaved
	}
	before, upTo := int(float64(i)*b.Misbehaving), int(float64(i+1)*b.Misbehaving)
	if upTo == before {
		return WellBehaved
	}
	return b.Modes[before%len(b.Modes)]
}

// Fleet is a set of simulated agents: registered identities, of which a
// prefix may be connected.
type Fleet struct {
	cfg     Config
	log     *slog.Logger
	regConn *grpc.ClientConn
	// reportsPaused holds back every agent's periodic status reports.
	reportsPaused atomic.Bool

	mu sync.Mutex // guards the fields below
	// agents are the registered identities, in name order.
	agents []*Agent
	// connected is how many of agents hold connections; cancel ends them
	// and wg waits for their goroutines.
	connected int
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// Start registers cfg.Agents agents and connects them with cfg.Behaviour
// (see Register and Connect). The agents run, reconnecting as real ones
// do, until Close.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (*Fleet, error) {
	f, err := New(cfg, logger)
	if err != nil {
		return nil, err
	}
	if err := f.Register(ctx, f.cfg.Agents); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Connect(ctx, f.cfg.Agents, f.cfg.Behaviour); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// New returns a fleet with no agents yet; Register adds them.
func New(cfg Config, logger *slog.Logger) (*Fleet, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cfg.CAPEM)
	// Registration has no client certificate yet: one connection serves
	// every agent's.
	regConn, err := grpc.NewClient(cfg.HubAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: roots, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS13})))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cfg.HubAddr, err)
	}
	return &Fleet{cfg: cfg, log: logger, regConn: regConn}, nil
}

// Register registers agents until the fleet has n, at most cfg.ConnectRate
// per second. Identities outlive connections and hub restarts: a fleet
// registered once can be connected many times.
func (f *Fleet) Register(ctx context.Context, n int) error {
	f.mu.Lock()
	have := len(f.agents)
	f.mu.Unlock()
	if n <= have {
		return nil
	}
	reg := droverv1.NewAgentServiceClient(f.regConn)
	added := make([]*Agent, n-have)
	limit := rate.NewLimiter(rate.Limit(f.cfg.ConnectRate), 1)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(f.cfg.Parallel)
	for i := range added {
		if err := limit.Wait(gctx); err != nil {
			break // a registration failed or ctx ended; g.Wait says which
		}
		g.Go(func() error {
			a, err := register(gctx, reg, &f.cfg, fmt.Sprintf("%s-%05d", f.cfg.NamePrefix, have+i), have+i)
			if a != nil {
				a.reportsPaused = &f.reportsPaused
			}
			added[i] = a
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.agents = append(f.agents, added...)
	return nil
}

// Connect ends the current connections and connects the first n agents
// with behaviour b, at most cfg.ConnectRate per second; it returns once
// every one has started. Each agent starts afresh, as a reinstalled agent
// with its old identity would: no records, nothing applied.
func (f *Fleet) Connect(ctx context.Context, n int, b Behaviour) error {
	b.setDefaults()
	if err := b.Validate(); err != nil {
		return err
	}
	f.Disconnect()
	f.mu.Lock()
	defer f.mu.Unlock()
	if n > len(f.agents) {
		return fmt.Errorf("connect %d agents: only %d registered", n, len(f.agents))
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = cancel
	limit := rate.NewLimiter(rate.Limit(f.cfg.ConnectRate), 1)
	for i, a := range f.agents[:n] {
		if err := limit.Wait(ctx); err != nil {
			return err
		}
		f.connected = i + 1
		a.reset(b, b.mode(i))
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			a.run(runCtx, f.log.With("cluster", a.name))
		}()
	}
	return nil
}

// PauseReports holds back (or, with false, resumes) the periodic status
// reports of Behaviour.StatusInterval, so that a fleet can connect before
// it loads status ingest.
func (f *Fleet) PauseReports(paused bool) { f.reportsPaused.Store(paused) }

// Disconnect ends every agent's connection and waits for its goroutines.
// The records stay until the next Connect.
func (f *Fleet) Disconnect() {
	f.mu.Lock()
	cancel := f.cancel
	f.cancel, f.connected = nil, 0
	f.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	f.wg.Wait()
}

// Agents returns the connected agents, in name order.
func (f *Fleet) Agents() []*Agent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.agents[:f.connected])
}

// Registered is how many agents have identities.
func (f *Fleet) Registered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.agents)
}

// Close ends every connection.
func (f *Fleet) Close() {
	f.Disconnect()
	f.regConn.Close()
}

// WellBehavedOnly returns the agents that speak the protocol, whose
// records the budgets are about.
func WellBehavedOnly(agents []*Agent) []*Agent {
	var out []*Agent
	for _, a := range agents {
		if a.Mode() == WellBehaved {
			out = append(out, a)
		}
	}
	return out
}

// register creates an agent's key and CSR and registers it, retrying while
// the hub is unavailable.
func register(ctx context.Context, reg droverv1.AgentServiceClient, cfg *Config, name string, index int) (*Agent, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, fmt.Errorf("agent %s: certificate request: %w", name, err)
	}
	req := &droverv1.RegisterRequest{
		JoinToken: cfg.JoinToken, ClusterName: name,
		CsrPem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}),
	}
	b := backoff.New(100*time.Millisecond, 5*time.Second)
	var resp *droverv1.RegisterResponse
	for {
		resp, err = reg.Register(ctx, req)
		if err == nil {
			break
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded:
			if b.Failures() >= 10 {
				return nil, fmt.Errorf("register %s: %w", name, err)
			}
			pause(ctx, b, err)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		case codes.AlreadyExists:
			return nil, fmt.Errorf("register %s: the name is taken (choose another name prefix): %w", name, err)
		default:
			return nil, fmt.Errorf("register %s: %w", name, err)
		}
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(resp.GetCertificatePem(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		return nil, fmt.Errorf("agent %s: issued certificate: %w", name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(resp.GetCaPem()) {
		return nil, fmt.Errorf("agent %s: the hub's CA in the registration reply is not PEM", name)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS13,
	})
	return &Agent{name: name, hubAddrs: cfg.HubAddrs, home: index % len(cfg.HubAddrs), creds: creds}, nil
}

// Arrival is one assignment as an agent received and answered it.
type Arrival struct {
	Version string
	// At is when the assignment arrived, taken before anything else.
	At time.Time
	// Applications is the number of applications assigned.
	Applications int
	// Failed tells that the simulated apply failed and the agent NACKed.
	Failed bool
	// Session counts the agent's streams, from 1, and tells which one
	// brought the assignment.
	Session int
}

// Agent is one simulated agent.
type Agent struct {
	name string
	// hubAddrs are the replicas' endpoints, and home the index of the one
	// each Connect starts on.
	hubAddrs []string
	home     int
	creds    credentials.TransportCredentials
	// reportsPaused is the fleet's.
	reportsPaused *atomic.Bool

	// open tells that the agent holds a stream (set after Hello is sent).
	open atomic.Bool

	mu sync.Mutex // guards the fields below
	// beh and mode are how the agent acts, set by each Connect.
	beh  Behaviour
	mode Mode
	// arrivals is every assignment received, in order.
	arrivals []Arrival
	// applied is the version last applied without error; Hello reports it,
	// as a real agent's does.
	applied string
	// answered is the version last ACKed or NACKed, and assignment its
	// applications, which periodic reports list.
	answered   string
	assignment *droverv1.Assignment
	// report is the last status report handed to the stream, and reports
	// how many were; resent counts those sent at the start of a stream.
	report  *droverv1.StatusReport
	reports int
	resent  int
	// sessions counts streams opened; hub is the endpoint of the replica
	// the current (or last) one is with, and sessionAt when it opened.
	sessions  int
	hub       string
	sessionAt time.Time
	// lastErr is why the last stream ended; ends counts the ends by gRPC
	// code, but for refusals that ask for a later retry, which deferred
	// counts; dialErrors counts connections and streams that could not be
	// made.
	lastErr    error
	ends       map[codes.Code]int
	deferred   int
	dialErrors int
}

// Name is the agent's cluster name.
func (a *Agent) Name() string { return a.name }

// Mode is how the agent (mis)behaves in its current connection.
func (a *Agent) Mode() Mode {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mode
}

// Connected reports whether the agent holds a stream now.
func (a *Agent) Connected() bool { return a.open.Load() }

// State is a copy of what an agent has seen and sent.
type State struct {
	Arrivals []Arrival
	// Applied is the version last applied without error, which the next
	// Hello reports.
	Applied string
	// Answered is the version last ACKed or NACKed, and Report the last
	// status report sent (nil before the first); Reports counts them.
	Answered string
	Report   *droverv1.StatusReport
	Reports  int
	// Resent counts the reports sent at the start of a stream, each
	// listing every status the agent holds.
	Resent int
	// Sessions counts the streams opened since the fleet's Connect; Hub
	// is the agent endpoint of the replica the current (or last) one is
	// with, and SessionAt when it opened. A hub sends nothing on a new
	// stream when the agent already holds its assignment, so this, not
	// an arrival, tells when a replica took an agent over.
	Sessions  int
	Hub       string
	SessionAt time.Time
	LastErr   error
	// Ends counts the streams that ended with an error, by its gRPC code
	// (codes.Unknown for an error that carries none), except refusals
	// that ask the agent to retry later (RetryInfo, as admission control
	// sends), which Deferred counts.
	Ends     map[codes.Code]int
	Deferred int
	// DialErrors counts connections, and streams on them, that could not
	// be made: the hub answered nothing.
	DialErrors int
}

// State returns a copy of the agent's records.
func (a *Agent) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	var rep *droverv1.StatusReport
	if a.report != nil {
		rep = proto.Clone(a.report).(*droverv1.StatusReport)
	}
	return State{
		Arrivals: slices.Clone(a.arrivals), Applied: a.applied, Answered: a.answered,
		Report: rep, Reports: a.reports, Resent: a.resent, Sessions: a.sessions, Hub: a.hub, SessionAt: a.sessionAt,
		LastErr: a.lastErr, Ends: maps.Clone(a.ends), Deferred: a.deferred, DialErrors: a.dialErrors,
	}
}

// reset clears the records for a new connection with behaviour b.
func (a *Agent) reset(b Behaviour, m Mode) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.beh, a.mode = b, m
	a.arrivals, a.applied, a.answered, a.assignment = nil, "", "", nil
	a.report, a.reports, a.resent, a.sessions, a.hub, a.sessionAt = nil, 0, 0, 0, "", time.Time{}
	a.lastErr, a.ends, a.deferred, a.dialErrors = nil, make(map[codes.Code]int), 0, 0
}

// ended records why a stream ended (or could not start).
func (a *Agent) ended(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastErr = err
	if err == nil {
		return
	}
	if retryDelay(err) > 0 {
		a.deferred++
		return
	}
	a.ends[status.Code(err)]++
}

// connectError is a stream that could not be opened: no connection to
// the hub was made (in time), so the hub answered nothing.
type connectError struct{ err error }

func (e *connectError) Error() string { return "connect: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// dialFailed records a connection that could not be made.
func (a *Agent) dialFailed(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastErr = err
	a.dialErrors++
}

// dial opens a connection of its own, with small buffers: 10,000 of them
// live in this one process, and the hub's memory is what is measured.
func (a *Agent) dial(addr string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(a.creds),
		grpc.WithReadBufferSize(8<<10), grpc.WithWriteBufferSize(8<<10), grpc.WithSharedWriteBuffer(true),
		// As drover-agent: gRPC's own redial backoff capped like the
		// session loop's, not at its default 120 s.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{
			BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 30 * time.Second,
		}, MinConnectTimeout: 20 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("agent %s: dial: %w", a.name, err)
	}
	return conn, nil
}

// run holds the agent's stream until ctx ends, reconnecting with backoff.
// With one hub address it keeps one connection and opens stream after
// stream on it. With several it moves, as drover-agent does, to the next
// replica whenever a stream ends or cannot be made, on a new connection:
// it waits only when a replica's refusal asks for it (a shed, say) or when
// every replica failed since the last wait, so that one replica going away
// costs its agents no delay.
func (a *Agent) run(ctx context.Context, log *slog.Logger) {
	a.mu.Lock()
	mode := a.mode
	a.mu.Unlock()
	if mode == ReconnectLoop {
		a.reconnectLoop(ctx)
		return
	}
	b := backoff.New(500*time.Millisecond, 30*time.Second)
	at, tried := a.home, 0
	// left is when a stream that held with each replica last ended.
	left := make([]time.Time, len(a.hubAddrs))
	for ctx.Err() == nil {
		addr := a.hubAddrs[at]
		// grpc.NewClient fails only on a target it cannot parse; it is
		// tried again like any failure rather than ending the agent.
		conn, err := a.dial(addr)
		if err != nil {
			a.dialFailed(err)
			log.Warn("agent dial failed", "hub", addr, "err", err)
			pause(ctx, b, err)
			continue
		}
		var held bool
		tried, held = a.serve(ctx, log, conn, addr, b, tried)
		conn.Close()
		if held {
			left[at] = time.Now()
		}
		if left[at].IsZero() {
			at = (at + 1) % len(a.hubAddrs)
		} else {
			at = hubclient.Successor(at, left)
		}
	}
}

// serve opens stream after stream on conn, to the replica at addr,
// until ctx ends or, with several replicas, until one stream ended: then it
// returns the count of failed attempts since the last wait, tried being
// the count before, and whether the stream that ended had held.
func (a *Agent) serve(ctx context.Context, log *slog.Logger, conn *grpc.ClientConn, addr string, b *backoff.Backoff, tried int) (int, bool) {
	a.mu.Lock()
	mode := a.mode
	a.mu.Unlock()
	client := droverv1.NewAgentServiceClient(conn)
	for {
		var err error
		var established bool
		switch mode {
		case Malformed:
			err = a.malformedSession(ctx, conn, addr)
		default:
			established, err = a.session(ctx, client, addr, mode)
		}
		a.open.Store(false)
		if ctx.Err() != nil {
			return tried, established
		}
		if ce := (*connectError)(nil); errors.As(err, &ce) {
			a.dialFailed(err)
		} else {
			a.ended(err)
		}
		log.Debug("agent stream ended", "hub", addr, "err", err)
		if established {
			// A session that worked starts the backoff over, so a hub
			// restart is followed by a quick reconnect, still jittered,
			// and gives every replica a fresh try.
			b.Reset()
			tried = 0
		} else {
			tried++
		}
		if len(a.hubAddrs) == 1 {
			pause(ctx, b, err)
			continue
		}
		if retryDelay(err) > 0 || tried >= len(a.hubAddrs) {
			tried = 0
			pause(ctx, b, err)
		}
		return tried, established
	}
}

// pause waits before the next attempt as drover-agent does: the backoff's
// next delay, or longer when the hub's refusal asks for it (RetryInfo).
func pause(ctx context.Context, b *backoff.Backoff, err error) {
	d := b.Next()
	if r := retryDelay(err); r > 0 {
		d = max(d, backoff.Jitter(min(r, 5*time.Minute), 0.2))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// retryDelay is the delay a refusal asks for (RetryInfo), 0 if none.
func retryDelay(err error) time.Duration {
	for _, detail := range status.Convert(err).Details() {
		if ri, ok := detail.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// reconnectLoop is a ReconnectLoop agent: a new connection, Hello, the
// hub's first answer, and away, again and again without backoff until ctx
// ends. Nothing else stops it: a failed dial or stream is counted and the
// loop goes on.
func (a *Agent) reconnectLoop(ctx context.Context) {
	for ctx.Err() == nil {
		a.reconnectOnce(ctx)
		t := time.NewTimer(reconnectLoopPause)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// reconnectOnce is one round of reconnectLoop.
func (a *Agent) reconnectOnce(ctx context.Context) {
	addr := a.hubAddrs[a.home]
	conn, err := a.dial(addr)
	if err != nil {
		a.dialFailed(err)
		return
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := droverv1.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		if ctx.Err() == nil {
			a.dialFailed(&connectError{err})
		}
		return
	}
	a.mu.Lock()
	a.sessions++
	session := a.sessions
	a.hub, a.sessionAt = addr, time.Now()
	a.mu.Unlock()
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: a.hello("")}}); err != nil {
		// The stream's status says why it could not be sent to.
		_, err = stream.Recv()
		if ctx.Err() == nil {
			a.ended(err)
		}
		return
	}
	m, err := stream.Recv()
	switch {
	case ctx.Err() != nil:
	case err != nil:
		a.ended(err)
	case m.GetAssignment() != nil:
		a.arrived(m.GetAssignment(), session)
	}
}

func (a *Agent) hello(applied string) *droverv1.Hello {
	return &droverv1.Hello{
		AgentVersion: "loadtest", AppliedAssignmentVersion: applied,
		Facts: &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "loadtest"},
	}
}

// session is one Connect stream. established reports whether the hub
// answered it with at least one message.
func (a *Agent) session(ctx context.Context, client droverv1.AgentServiceClient, addr string, mode Mode) (established bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Connect(ctx)
	if err != nil {
		return false, &connectError{err}
	}
	a.mu.Lock()
	a.sessions++
	a.hub, a.sessionAt = addr, time.Now()
	session, applied, beh := a.sessions, a.applied, a.beh
	a.mu.Unlock()
	// Until the receiving goroutine starts, a failed Send's status is
	// read here (gRPC's Send reports only io.EOF when the hub ended the
	// stream).
	status0 := func(what string, err error) error {
		if errors.Is(err, io.EOF) {
			_, err = stream.Recv()
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: a.hello(applied)}}); err != nil {
		return false, status0("hello", err)
	}
	a.open.Store(true)
	if mode == Oversized {
		big := &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{{
			Application: "oversized", Message: strings.Repeat("x", OversizedBytes),
		}}}
		if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: big}}); err != nil {
			return false, status0("oversized status", err)
		}
	}
	// As drover-agent does on every new stream: every status again, for a
	// hub that may have lost them (a restarted one, say).
	if mode == WellBehaved {
		if err := a.resendStatuses(stream); err != nil {
			return false, status0("resend", err)
		}
	}

	// One goroutine receives; this one is the stream's only sender.
	assignments := make(chan *droverv1.Assignment, 16)
	recvErr := make(chan error, 1)
	var got atomic.Bool
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			got.Store(true)
			if as := m.GetAssignment(); as != nil {
				a.arrived(as, session)
				select {
				case assignments <- as:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	// From here a failed Send's status comes through the receiving
	// goroutine.
	sendFailed := func(err error) error {
		for errors.Is(err, io.EOF) {
			select {
			case rerr := <-recvErr:
				return fmt.Errorf("%w; receive: %w", err, rerr)
			case <-assignments:
				// Too late to answer; keeps the receiver from blocking.
			case <-ctx.Done():
				return err
			}
		}
		return err
	}

	heartbeat := time.NewTimer(time.Duration(mathrand.Int64N(int64(beh.Heartbeat))) + 1)
	defer heartbeat.Stop()
	// A nil channel never fires: no periodic reports unless asked for.
	var report <-chan time.Time
	if beh.StatusInterval > 0 && mode == WellBehaved {
		t := time.NewTicker(backoff.Jitter(beh.StatusInterval, 0.1))
		defer t.Stop()
		report = t.C
	}
	var flood <-chan time.Time
	if mode == StatusFlood {
		// Far faster than the hub admits; the stream's flow control then
		// holds the sender, as it would a real flooding agent.
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		flood = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return got.Load() && mode == WellBehaved, nil
		case err := <-recvErr:
			// Misbehaving agents never count a session as established,
			// so their reconnects back off to the cap.
			return got.Load() && mode == WellBehaved, fmt.Errorf("receive: %w", err)
		case as := <-assignments:
			if mode == NeverAck {
				continue
			}
			if err := a.apply(ctx, stream, as, beh); err != nil {
				return got.Load() && mode == WellBehaved, sendFailed(err)
			}
		case <-report:
			if a.reportsPaused.Load() {
				continue
			}
			if err := a.reportAgain(stream); err != nil {
				return got.Load(), sendFailed(err)
			}
		case <-flood:
			// A flood of statuses needs statuses: an agent assigned
			// nothing has none to send.
			if !a.holdsApplications() {
				continue
			}
			if err := a.reportAgain(stream); err != nil {
				return false, sendFailed(err)
			}
		case <-heartbeat.C:
			heartbeat.Reset(backoff.Jitter(beh.Heartbeat, 0.1))
			if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Heartbeat{Heartbeat: &droverv1.Heartbeat{SentAt: timestamppb.Now()}}}); err != nil {
				return got.Load() && mode == WellBehaved, sendFailed(fmt.Errorf("heartbeat: %w", err))
			}
		}
	}
}

// rawCodec passes []byte through as the message, so a Malformed agent can
// send what no protobuf encoder would produce.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: marshal %T, want *[]byte", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: unmarshal into %T, want *[]byte", v)
	}
	*b = data.Materialize()
	return nil
}

// Name keeps the content type application/grpc+proto, so the hub decodes
// the bytes as the protobuf they pretend to be.
func (rawCodec) Name() string { return "proto" }

// malformedSession is one stream of a Malformed agent: a valid Hello,
// then messages the hub must refuse one by one, then garbage.
func (a *Agent) malformedSession(ctx context.Context, conn *grpc.ClientConn, addr string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := conn.NewStream(ctx, &droverv1.AgentService_ServiceDesc.Streams[0],
		droverv1.AgentService_Connect_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		return &connectError{err}
	}
	a.mu.Lock()
	a.sessions++
	a.hub, a.sessionAt = addr, time.Now()
	a.mu.Unlock()
	msgs := []*droverv1.AgentMessage{
		{Kind: &droverv1.AgentMessage_Hello{Hello: a.hello("")}},
		{Kind: &droverv1.AgentMessage_Ack{Ack: &droverv1.AssignmentAck{Version: "no-such-version", Nonce: "no-such-nonce"}}},
		{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Full: true, Applications: []*droverv1.ApplicationStatus{{
			Application: "not-assigned-" + a.name, Sync: 999, Health: -7,
			Resources: []*droverv1.ResourceStatus{{Kind: "Deployment", Name: "x", Health: 12345}},
		}}}}},
	}
	for _, m := range msgs {
		raw, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		if err := stream.SendMsg(&raw); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	a.open.Store(true)
	// A field 1 of wire type 7, which does not exist, then a length that
	// runs past the end.
	garbage := []byte{0x0f, 0xff, 0xff, 0xff, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 'x'}
	if err := stream.SendMsg(&garbage); err != nil {
		return fmt.Errorf("send garbage: %w", err)
	}
	for {
		var in []byte
		if err := stream.RecvMsg(&in); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
	}
}

func (a *Agent) arrived(as *droverv1.Assignment, session int) {
	at := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.arrivals = append(a.arrivals, Arrival{Version: as.GetVersion(), At: at, Applications: len(as.GetApplications()), Session: session})
}

// apply simulates applying as, then answers it and reports the status of
// every assigned application.
func (a *Agent) apply(ctx context.Context, stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage], as *droverv1.Assignment, beh Behaviour) error {
	if d := backoff.Jitter(beh.ApplyLatency, 0.2); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	failed := beh.FailRate > 0 && mathrand.Float64() < beh.FailRate
	ack := &droverv1.AssignmentAck{Version: as.GetVersion(), Nonce: as.GetNonce()}
	if failed {
		ack.Error = "simulated apply failure"
	}
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Ack{Ack: ack}}); err != nil {
		return fmt.Errorf("answer %s: %w", as.GetVersion(), err)
	}
	a.mu.Lock()
	a.answered, a.assignment = as.GetVersion(), as
	if a.arrivals[len(a.arrivals)-1].Version == as.GetVersion() && failed {
		a.arrivals[len(a.arrivals)-1].Failed = true
	}
	if !failed {
		a.applied = as.GetVersion()
	}
	a.mu.Unlock()
	return a.sendReport(stream, as, failed, true)
}

// reportAgain sends a fresh full report of the last answered assignment.
func (a *Agent) reportAgain(stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage]) error {
	a.mu.Lock()
	as, failed := a.assignment, a.applied != a.answered
	a.mu.Unlock()
	if as == nil {
		return nil
	}
	return a.sendReport(stream, as, failed, true)
}

// holdsApplications tells whether the last answered assignment has any.
func (a *Agent) holdsApplications() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.assignment.GetApplications()) > 0
}

// resendStatuses sends, at the start of a stream, the status of every
// application of the last answered assignment, if any, in a report that
// is not full, as drover-agent's does (a resend deletes nothing on the
// hub). It is numbered afresh like every report, so that what the hub
// stored afterwards tells whether the resend arrived.
func (a *Agent) resendStatuses(stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage]) error {
	a.mu.Lock()
	as, failed := a.assignment, a.applied != a.answered
	a.mu.Unlock()
	if len(as.GetApplications()) == 0 {
		return nil
	}
	if err := a.sendReport(stream, as, failed, false); err != nil {
		return err
	}
	a.mu.Lock()
	a.resent++
	a.mu.Unlock()
	return nil
}

// sendReport sends a report of every application of as with
// ResourcesPerApp resources, numbered in its message; full tells the hub
// to delete the statuses of applications not listed.
func (a *Agent) sendReport(stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage], as *droverv1.Assignment, failed, full bool) error {
	a.mu.Lock()
	a.reports++
	n, resources := a.reports, a.beh.ResourcesPerApp
	a.mu.Unlock()
	rep := statusReport(as, failed, n, resources)
	rep.Full = full
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: rep}}); err != nil {
		return fmt.Errorf("status for %s: %w", as.GetVersion(), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.report = rep
	return nil
}

// ReportNumber reads the number a report's status message carries; ok is
// false for a message without one.
func ReportNumber(message string) (n int, ok bool) {
	rest, found := strings.CutPrefix(message, "report ")
	if !found {
		return 0, false
	}
	num, _, _ := strings.Cut(rest, ":")
	n, err := strconv.Atoi(num)
	return n, err == nil
}

// statusReport is report number n after applying as: every assigned
// application with the given number of resources.
func statusReport(as *droverv1.Assignment, failed bool, n, resources int) *droverv1.StatusReport {
	now := timestamppb.Now()
	rep := &droverv1.StatusReport{Full: true}
	for _, app := range as.GetApplications() {
		st := &droverv1.ApplicationStatus{
			Application: app.GetName(), Commit: app.GetCommit(),
			Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY,
			Message: fmt.Sprintf("report %d", n), ObservedAt: now,
		}
		health := droverv1.Health_HEALTH_HEALTHY
		if failed {
			st.Sync, st.Health = droverv1.SyncState_SYNC_STATE_FAILED, droverv1.Health_HEALTH_DEGRADED
			st.Message = fmt.Sprintf("report %d: simulated apply failure", n)
			health = droverv1.Health_HEALTH_PROGRESSING
		}
		for i := range resources {
			st.Resources = append(st.Resources, &droverv1.ResourceStatus{
				Group: "apps", Version: "v1", Kind: "Deployment", Namespace: app.GetNamespace(),
				Name: fmt.Sprintf("%s-%d", app.GetName(), i), Health: health,
			})
		}
		rep.Applications = append(rep.Applications, st)
	}
	return rep
}
