// Package loadtest simulates a fleet of Drover agents in one process, to
// measure and check a hub at scale. Every simulated agent is what a real
// one is on the wire: it registers through a join token with its own key and
// CSR, holds its own mutually authenticated gRPC connection, says Hello,
// answers every assignment with an ACK or a NACK after a simulated apply,
// reports the status of each assigned application with a configurable
// number of resources, and heartbeats. It records when each assignment
// version arrived, so callers can compute fan-out latencies and check that
// nothing was lost or sent twice.
//
// drover-loadtest (e2e/cmd/drover-loadtest) runs it against a hub by
// address; tests run it against an in-process hub.
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
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/internal/backoff"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Config describes the simulated fleet. Zero values take the defaults.
type Config struct {
	// HubAddr is the hub's agent endpoint, host:port.
	HubAddr string
	// ServerName is the name the hub's serving certificate is checked
	// against; empty means the host of HubAddr.
	ServerName string
	// CAPEM is the hub's CA certificate, which agents trust before they
	// register (the CA that signs their identities comes with it).
	CAPEM []byte
	// JoinToken registers every agent, so it must be reusable.
	JoinToken string
	// Agents is how many agents to simulate.
	Agents int
	// NamePrefix starts every cluster name: "<prefix>-00042". Runs against
	// one hub need different prefixes, since a name registers once.
	NamePrefix string
	// ResourcesPerApp is how many resources each application status lists.
	ResourcesPerApp int
	// Heartbeat is each agent's heartbeat interval (jittered ±10%).
	Heartbeat time.Duration
	// ApplyLatency is how long a simulated apply takes (jittered ±20%).
	ApplyLatency time.Duration
	// FailRate is the probability, 0 to 1, that an apply fails: the agent
	// NACKs the assignment and reports the applications failed.
	FailRate float64
	// ConnectRate bounds new registrations and streams per second across
	// the fleet at start, so that starting 10,000 agents measures the
	// hub's steady state rather than a self-inflicted stampede.
	ConnectRate float64
	// Parallel bounds registrations in flight.
	Parallel int
}

func (c *Config) setDefaults() {
	if c.NamePrefix == "" {
		c.NamePrefix = "load"
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 30 * time.Second
	}
	if c.ConnectRate <= 0 {
		c.ConnectRate = 200
	}
	if c.Parallel <= 0 {
		c.Parallel = 32
	}
	if c.ServerName == "" {
		if host, _, err := net.SplitHostPort(c.HubAddr); err == nil {
			c.ServerName = host
		}
	}
}

// Validate reports every problem, naming the field.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.HubAddr); err != nil {
		errs = append(errs, fmt.Errorf("hub address %q: want host:port: %w", c.HubAddr, err))
	}
	if len(c.CAPEM) == 0 || !x509.NewCertPool().AppendCertsFromPEM(c.CAPEM) {
		errs = append(errs, errors.New("hub CA: want a PEM certificate (the hub's ca.crt)"))
	}
	if c.JoinToken == "" {
		errs = append(errs, errors.New("join token: required; create a reusable one with droverctl"))
	}
	if c.Agents <= 0 {
		errs = append(errs, fmt.Errorf("agents: %d, want at least 1", c.Agents))
	}
	if c.ResourcesPerApp < 0 {
		errs = append(errs, fmt.Errorf("resources per app: %d, want 0 or more", c.ResourcesPerApp))
	}
	if c.ApplyLatency < 0 {
		errs = append(errs, fmt.Errorf("apply latency: %v, want 0 or more", c.ApplyLatency))
	}
	if c.FailRate < 0 || c.FailRate > 1 {
		errs = append(errs, fmt.Errorf("fail rate: %v, want 0 to 1", c.FailRate))
	}
	return errors.Join(errs...)
}

// Fleet is a running set of simulated agents.
type Fleet struct {
	cfg    Config
	log    *slog.Logger
	agents []*Agent
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start registers cfg.Agents agents and opens their streams, at most
// cfg.ConnectRate per second, and returns once every agent has registered
// and sent its first Hello. The agents run, reconnecting as real ones do,
// until Close.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (*Fleet, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cfg.CAPEM)
	regConn, err := grpc.NewClient(cfg.HubAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: roots, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS13})))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cfg.HubAddr, err)
	}
	// Registration has no client certificate yet: one connection serves
	// every agent's.
	defer regConn.Close()
	reg := droverv1.NewAgentServiceClient(regConn)

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &Fleet{cfg: cfg, log: logger, agents: make([]*Agent, cfg.Agents), cancel: cancel}
	limit := rate.NewLimiter(rate.Limit(cfg.ConnectRate), 1)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.Parallel)
	for i := range f.agents {
		if err := limit.Wait(gctx); err != nil {
			break // a registration failed or ctx ended; g.Wait says which
		}
		g.Go(func() error {
			a, err := register(gctx, reg, &cfg, fmt.Sprintf("%s-%05d", cfg.NamePrefix, i))
			if err != nil {
				return err
			}
			f.agents[i] = a
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				a.run(runCtx, logger.With("cluster", a.name))
			}()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		f.Close()
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Agents returns the simulated agents, in name order.
func (f *Fleet) Agents() []*Agent { return f.agents }

// Close ends every agent's stream and waits for its goroutines.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
	for _, a := range f.agents {
		if a != nil {
			a.conn.Close()
		}
	}
}

// register creates an agent's key and CSR and registers it, retrying while
// the hub is unavailable.
func register(ctx context.Context, reg droverv1.AgentServiceClient, cfg *Config, name string) (*Agent, error) {
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
			b.Wait(ctx, err)
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
	conn, err := grpc.NewClient(cfg.HubAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		return nil, fmt.Errorf("agent %s: dial: %w", name, err)
	}
	return &Agent{name: name, cfg: cfg, conn: conn}, nil
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
	cfg  *Config
	conn *grpc.ClientConn

	// open counts agents with a live stream (set after Hello is sent).
	open atomic.Bool

	mu sync.Mutex // guards the fields below
	// arrivals is every assignment received, in order.
	arrivals []Arrival
	// applied is the version last applied without error; Hello reports it,
	// as a real agent's does.
	applied string
	// answered is the version last ACKed or NACKed.
	answered string
	// report is the last status report handed to the stream.
	report *droverv1.StatusReport
	// sessions counts streams opened.
	sessions int
	// lastErr is why the last stream ended.
	lastErr error
}

// Name is the agent's cluster name.
func (a *Agent) Name() string { return a.name }

// Connected reports whether the agent holds a stream now.
func (a *Agent) Connected() bool { return a.open.Load() }

// State is a copy of what an agent has seen and sent.
type State struct {
	Arrivals []Arrival
	// Answered is the version last ACKed or NACKed, and Report the status
	// report sent after answering it (nil before the first).
	Answered string
	Report   *droverv1.StatusReport
	Sessions int
	LastErr  error
}

// State returns a copy of the agent's records.
func (a *Agent) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	var rep *droverv1.StatusReport
	if a.report != nil {
		rep = proto.Clone(a.report).(*droverv1.StatusReport)
	}
	return State{Arrivals: slices.Clone(a.arrivals), Answered: a.answered, Report: rep, Sessions: a.sessions, LastErr: a.lastErr}
}

// run holds the agent's stream until ctx ends, reconnecting with backoff.
func (a *Agent) run(ctx context.Context, log *slog.Logger) {
	b := backoff.New(500*time.Millisecond, 30*time.Second)
	for {
		established, err := a.session(ctx)
		a.open.Store(false)
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		a.lastErr = err
		a.mu.Unlock()
		log.Debug("agent stream ended", "err", err)
		if established {
			// A session that worked starts the backoff over, so a hub
			// restart is followed by a quick reconnect, still jittered.
			b.Reset()
		}
		b.Wait(ctx, err)
	}
}

// session is one Connect stream. established reports whether the hub
// answered it with at least one message.
func (a *Agent) session(ctx context.Context) (established bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := droverv1.NewAgentServiceClient(a.conn).Connect(ctx)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	a.mu.Lock()
	a.sessions++
	session, applied := a.sessions, a.applied
	a.mu.Unlock()
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: &droverv1.Hello{
		AgentVersion: "loadtest", AppliedAssignmentVersion: applied,
		Facts: &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "loadtest"},
	}}}); err != nil {
		return false, fmt.Errorf("hello: %w", err)
	}
	a.open.Store(true)

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

	heartbeat := time.NewTimer(backoff.Jitter(a.cfg.Heartbeat, 0.1))
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return got.Load(), nil
		case err := <-recvErr:
			return got.Load(), fmt.Errorf("receive: %w", err)
		case as := <-assignments:
			if err := a.apply(ctx, stream, as); err != nil {
				return got.Load(), err
			}
		case <-heartbeat.C:
			heartbeat.Reset(backoff.Jitter(a.cfg.Heartbeat, 0.1))
			if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Heartbeat{Heartbeat: &droverv1.Heartbeat{SentAt: timestamppb.Now()}}}); err != nil {
				return got.Load(), fmt.Errorf("heartbeat: %w", err)
			}
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
func (a *Agent) apply(ctx context.Context, stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage], as *droverv1.Assignment) error {
	if d := backoff.Jitter(a.cfg.ApplyLatency, 0.2); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	failed := a.cfg.FailRate > 0 && mathrand.Float64() < a.cfg.FailRate
	ack := &droverv1.AssignmentAck{Version: as.GetVersion(), Nonce: as.GetNonce()}
	if failed {
		ack.Error = "simulated apply failure"
	}
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Ack{Ack: ack}}); err != nil {
		return fmt.Errorf("answer %s: %w", as.GetVersion(), err)
	}
	rep := a.statusReport(as, failed)
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: rep}}); err != nil {
		return fmt.Errorf("status for %s: %w", as.GetVersion(), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.answered, a.report = as.GetVersion(), rep
	if a.arrivals[len(a.arrivals)-1].Version == as.GetVersion() && failed {
		a.arrivals[len(a.arrivals)-1].Failed = true
	}
	if !failed {
		a.applied = as.GetVersion()
	}
	return nil
}

// statusReport is the full report after applying as: every assigned
// application with cfg.ResourcesPerApp resources.
func (a *Agent) statusReport(as *droverv1.Assignment, failed bool) *droverv1.StatusReport {
	now := timestamppb.Now()
	rep := &droverv1.StatusReport{Full: true}
	for _, app := range as.GetApplications() {
		st := &droverv1.ApplicationStatus{
			Application: app.GetName(), Commit: app.GetCommit(),
			Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY,
			ObservedAt: now,
		}
		health := droverv1.Health_HEALTH_HEALTHY
		if failed {
			st.Sync, st.Health, st.Message = droverv1.SyncState_SYNC_STATE_FAILED, droverv1.Health_HEALTH_DEGRADED, "simulated apply failure"
			health = droverv1.Health_HEALTH_PROGRESSING
		}
		for i := range a.cfg.ResourcesPerApp {
			st.Resources = append(st.Resources, &droverv1.ResourceStatus{
				Group: "apps", Version: "v1", Kind: "Deployment", Namespace: app.GetNamespace(),
				Name: fmt.Sprintf("%s-%d", app.GetName(), i), Health: health,
			})
		}
		rep.Applications = append(rep.Applications, st)
	}
	return rep
}
