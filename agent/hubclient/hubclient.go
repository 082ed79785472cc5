// Package hubclient is the agent's side of the Drover agent protocol: it
// registers with a join token once, then keeps one mutually authenticated
// Connect stream to the hub, reconnecting with capped, jittered backoff. It
// always dials out, so an agent behind NAT needs no inbound access.
package hubclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/agent/state"
	"github.com/drover-dev/drover/internal/backoff"
	"github.com/drover-dev/drover/internal/version"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// MaxMessageBytes bounds every message the agent receives.
const MaxMessageBytes = 16 << 20

// Handler is the agent's side of a session. A session has two goroutines
// that call it: the sender (the one that runs the session, sends Hello,
// statuses and heartbeats) and the receiver (one per stream Recv, which
// handles what the hub sends). Each method says which calls it; the two
// may call at the same time, so a Handler must be safe for that; the
// receiver of a session that ended may still be finishing a call while the
// next session's sender starts.
type Handler interface {
	// Assignment takes a new assignment. An error rejects it (NACK) and the
	// previous one stays in force; otherwise the handler later calls the
	// Client's Ack once the assignment is applied. Called from the
	// receiver; the next message waits for it.
	Assignment(ctx context.Context, a *droverv1.Assignment) error
	// Command asks for an action now. Called from the receiver.
	Command(ctx context.Context, c *droverv1.Command)
	// Facts describes the cluster for Hello. Called from the sender,
	// before the receiver starts.
	Facts(ctx context.Context) *droverv1.ClusterFacts
	// AppliedVersion is the version of the last assignment applied, for
	// Hello. Called from the sender, before the receiver starts.
	AppliedVersion() string
	// SessionStarted tells the handler a new session with the hub began.
	// The hub may have lost what earlier sessions sent (it crashed between
	// receiving statuses and writing them) and cannot say which, so the
	// handler's next PendingStatus should list every status again. Called
	// from the sender, while the receiver may be handling an assignment.
	SessionStarted()
	// PendingStatus returns the statuses to send on a new session and
	// between heartbeats, with the applications removed since the last
	// report; full asks for every application. A report with none of
	// these, and not full, is not sent. Called from the sender.
	PendingStatus(full bool) *droverv1.StatusReport
	// StatusSent tells the handler a report was handed to the stream.
	// Called from the sender, right after the PendingStatus it answers.
	StatusSent(r *droverv1.StatusReport)
}

// Config configures a Client.
type Config struct {
	// HubAddrs are the agent endpoints of the hub's replicas, HOST:PORT
	// each (see ParseAddrs). The agent holds one session at a time, with
	// one of them, and moves to the next when it ends.
	HubAddrs []string
	// ServerName overrides the name checked in the hub's certificate;
	// empty means the host each address was given with.
	ServerName string
	// HubCA is the PEM CA the hub's serving certificate chains to; needed
	// for the first registration, afterwards the stored one is used.
	HubCA []byte
	// JoinToken and ClusterName register the agent on first start.
	JoinToken   string
	ClusterName string
	// Heartbeat is how often the agent says it is alive (jittered).
	Heartbeat time.Duration
	// StatusFlush is how often changed statuses are sent.
	StatusFlush time.Duration
	// FullResync is how often every status is sent again (jittered).
	FullResync time.Duration
	// KeepaliveTime is how often gRPC pings an idle connection; it holds
	// NAT mappings open and notices a dead hub.
	KeepaliveTime time.Duration
	// BackoffBase and BackoffMax bound the reconnect delays.
	BackoffBase, BackoffMax time.Duration
}

func (c *Config) setDefaults() {
	if c.Heartbeat <= 0 {
		c.Heartbeat = 30 * time.Second
	}
	if c.StatusFlush <= 0 {
		c.StatusFlush = time.Second
	}
	if c.FullResync <= 0 {
		c.FullResync = 10 * time.Minute
	}
	if c.KeepaliveTime <= 0 {
		c.KeepaliveTime = 30 * time.Second
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 30 * time.Second
	}
}

// Client holds the agent's connection to the hub.
type Client struct {
	cfg     Config
	state   *state.Dir
	handler Handler
	log     *slog.Logger

	// acks hands ACK/NACKs from the handler to the session's sender.
	acks chan *droverv1.AssignmentAck
	// statusWake asks the sender to send pending statuses now.
	statusWake chan struct{}
	// connected is set while a session the hub has answered is up.
	connected atomic.Bool
	// hub is the address of the replica of the current or last attempt.
	hub atomic.Pointer[string]
	// attempts counts registrations and sessions tried; received counts
	// the assignments the hub sent.
	attempts, received atomic.Int64
}

// Connected reports whether a session the hub has answered is up.
func (c *Client) Connected() bool { return c.connected.Load() }

// Hub is the address of the hub replica the current session is with, or
// "" while there is none.
func (c *Client) Hub() string {
	addr := c.hub.Load()
	if addr == nil || !c.connected.Load() {
		return ""
	}
	return *addr
}

// Attempts counts the registrations and sessions the agent tried, one per
// dial of a replica.
func (c *Client) Attempts() int64 { return c.attempts.Load() }

// AssignmentsReceived counts the assignments hubs sent the agent.
func (c *Client) AssignmentsReceived() int64 { return c.received.Load() }

// New returns a Client.
func New(cfg Config, st *state.Dir, h Handler, logger *slog.Logger) *Client {
	cfg.setDefaults()
	return &Client{cfg: cfg, state: st, handler: h, log: logger, acks: make(chan *droverv1.AssignmentAck, 16), statusWake: make(chan struct{}, 1)}
}

// Ack reports that the assignment with version and nonce was applied
// (err == nil) or could not be taken (err != nil). It never blocks; when
// the stream is gone the answer is dropped and Hello's applied version
// tells the next session what the agent has.
func (c *Client) Ack(version, nonce string, err error) {
	a := &droverv1.AssignmentAck{Version: version, Nonce: nonce}
	if err != nil {
		a.Error = err.Error()
	}
	select {
	case c.acks <- a:
	default:
		c.log.Warn("assignment answer dropped: the sender is behind", "version", version)
	}
}

// StatusChanged asks for changed statuses to be sent soon.
func (c *Client) StatusChanged() {
	select {
	case c.statusWake <- struct{}{}:
	default:
	}
}

// Register obtains the agent's identity with the join token, unless it has
// one already.
func (c *Client) Register(ctx context.Context) error {
	if _, _, err := c.state.Identity(); err == nil {
		return nil
	} else if !errors.Is(err, state.ErrNoIdentity) {
		return err
	}
	if c.cfg.JoinToken == "" || c.cfg.ClusterName == "" {
		return errors.New("the agent has no identity yet: give --join-token and --cluster-name for its first start")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.cfg.HubCA) {
		return errors.New("the hub CA (--hub-ca) holds no PEM certificate")
	}
	if len(c.cfg.HubAddrs) == 0 {
		return errors.New("no hub address: give --hub")
	}
	csr, err := c.state.NewKeyAndCSR(c.cfg.ClusterName)
	if err != nil {
		return err
	}
	tlsCfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	req := &droverv1.RegisterRequest{JoinToken: c.cfg.JoinToken, ClusterName: c.cfg.ClusterName, CsrPem: csr}
	b := backoff.New(c.cfg.BackoffBase, c.cfg.BackoffMax)
	hubs := newHubs(c.cfg.HubAddrs, c.cfg.ServerName, c.log)
	for {
		// One channel per attempt, as in Run: the backoff below paces
		// the dials, not a channel's own.
		t := hubs.pick(ctx)
		resp, err := c.register(ctx, t, tlsCfg, req)
		if err == nil {
			if err := c.state.SaveIdentity(resp.GetCertificatePem(), resp.GetCaPem()); err != nil {
				return err
			}
			c.log.Info("registered with the hub", "cluster", c.cfg.ClusterName, "hub", t.addr)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A refused token or name will not be accepted by trying again.
		switch status.Code(err) {
		case codes.PermissionDenied, codes.InvalidArgument, codes.AlreadyExists, codes.Unauthenticated:
			return fmt.Errorf("register with the hub: %s", status.Convert(err).Message())
		}
		c.log.Warn("register with the hub; retrying", "hub", t.addr, "err", err)
		hubs.pause(ctx, b, err)
	}
}

// register makes one registration attempt on a new channel to t.
func (c *Client) register(ctx context.Context, t target, tlsCfg *tls.Config, req *droverv1.RegisterRequest) (*droverv1.RegisterResponse, error) {
	conn, err := c.dial(t, tlsCfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return droverv1.NewAgentServiceClient(conn).Register(ctx, req)
}

// Run keeps a session with the hub until ctx ends.
//
// Every attempt dials on a new gRPC channel, closed when the attempt ends.
// A channel kept across attempts redials on its own backoff and, while a
// redial is pending, fails every new stream at once with the error of its
// last dial: after a hub restart the agent would wait out its own backoff,
// be told "connection refused" by a hub that had been listening for
// seconds, and wait again — up to twice --backoff-max. With one dial per
// attempt the session loop alone paces reconnects, and the first attempt
// after the hub is back reaches it.
//
// With several hub replicas, each attempt goes to the next one; the agent
// waits only once every replica failed since its last wait (see hubs), or
// as long as a replica asked it to when it refused or shed the session.
func (c *Client) Run(ctx context.Context) error {
	if len(c.cfg.HubAddrs) == 0 {
		return errors.New("no hub address: give --hub")
	}
	cert, pool, err := c.state.Identity()
	if err != nil {
		return err
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
	b := backoff.New(c.cfg.BackoffBase, c.cfg.BackoffMax)
	hubs := newHubs(c.cfg.HubAddrs, c.cfg.ServerName, c.log)
	for {
		start := time.Now()
		t := hubs.pick(ctx)
		err := c.attempt(ctx, t, tlsCfg)
		established := c.connected.Swap(false)
		if ctx.Err() != nil {
			return nil
		}
		if established {
			// The hub admitted the session and answered: the next
			// reconnect starts over. A dial or a refusal, however long
			// it took, does not count.
			b.Reset()
			// A session that held gives every replica a fresh try; one
			// that a hub ended at once counts against the round, so
			// hubs that admit and drop the agent do not spin it.
			if time.Since(start) >= c.cfg.BackoffBase {
				hubs.newRound()
			}
		}
		if status.Code(err) == codes.PermissionDenied {
			c.log.Error("the hub refused this agent; check that the cluster is registered and not revoked", "hub", t.addr, "err", status.Convert(err).Message())
		} else {
			c.log.Warn("hub session ended; reconnecting", "hub", t.addr, "err", err, "failures", b.Failures()+1, "lasted", time.Since(start))
		}
		// A hub busy admitting a reconnect storm, or shedding load,
		// ends the session with a retry delay; honouring it, jittered,
		// is what spreads the fleet's retries out instead of repeating
		// the storm, and the next attempt goes to another replica.
		hubs.pause(ctx, b, err)
	}
}

// attempt dials the replica t on a new channel and runs one session on it.
func (c *Client) attempt(ctx context.Context, t target, tlsCfg *tls.Config) error {
	conn, err := c.dial(t, tlsCfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	c.hub.Store(&t.addr)
	return c.session(ctx, t.addr, droverv1.NewAgentServiceClient(conn), &c.connected)
}

// dial returns a new channel to the replica t, counted as an attempt; it
// connects on first use.
func (c *Client) dial(t target, tlsCfg *tls.Config) (*grpc.ClientConn, error) {
	c.attempts.Add(1)
	tlsCfg = tlsCfg.Clone()
	tlsCfg.ServerName = t.serverName
	conn, err := grpc.NewClient(t.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: c.cfg.KeepaliveTime, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// A dial into a dead link is given up after the backoff cap, or
		// one started during a partition would hang on for 20 s after
		// the link is back.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.DefaultConfig, MinConnectTimeout: c.cfg.BackoffMax}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("dial hub %s: %w", t.addr, err)
	}
	return conn, nil
}

// retryHint returns the delay a hub's refusal asks for, or 0.
func retryHint(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			// Capped: a broken or hostile hub must not park the agent.
			return min(ri.GetRetryDelay().AsDuration(), maxRetryHint)
		}
	}
	return 0
}

// maxRetryHint caps the delay a hub can ask an agent to wait.
const maxRetryHint = 5 * time.Minute

// session is one Connect stream with the replica at hub: Hello, then
// assignments in and answers, statuses and heartbeats out.
// established is set once the hub's first message arrives.
func (c *Client) session(ctx context.Context, hub string, client droverv1.AgentServiceClient, established *atomic.Bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Connect(ctx)
	if err != nil {
		return err
	}
	hello := &droverv1.Hello{AgentVersion: version.Version, Facts: c.handler.Facts(ctx), AppliedAssignmentVersion: c.handler.AppliedVersion()}
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		return err
	}
	c.log.Info("connected to the hub", "hub", hub, "applied", hello.GetAppliedAssignmentVersion())

	recvErr := make(chan error, 1)
	go func() { recvErr <- c.recv(ctx, stream, established) }()

	heartbeat := time.NewTimer(jitter(c.cfg.Heartbeat))
	defer heartbeat.Stop()
	flush := time.NewTicker(c.cfg.StatusFlush)
	defer flush.Stop()
	full := time.NewTimer(jitter(c.cfg.FullResync))
	defer full.Stop()

	// Every status goes out first: what changed while disconnected, and
	// what the hub may have lost.
	c.handler.SessionStarted()
	if err := c.sendStatus(stream, false); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return err
		case a := <-c.acks:
			if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Ack{Ack: a}}); err != nil {
				return err
			}
		case <-c.statusWake:
			if err := c.sendStatus(stream, false); err != nil {
				return err
			}
		case <-flush.C:
			if err := c.sendStatus(stream, false); err != nil {
				return err
			}
		case <-full.C:
			full.Reset(jitter(c.cfg.FullResync))
			if err := c.sendStatus(stream, true); err != nil {
				return err
			}
		case <-heartbeat.C:
			heartbeat.Reset(jitter(c.cfg.Heartbeat))
			if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Heartbeat{Heartbeat: &droverv1.Heartbeat{SentAt: timestamppb.Now()}}}); err != nil {
				return err
			}
		}
	}
}

func (c *Client) sendStatus(stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage], full bool) error {
	r := c.handler.PendingStatus(full)
	if r == nil || (len(r.GetApplications()) == 0 && len(r.GetRemoved()) == 0 && !r.GetFull()) {
		return nil
	}
	if err := stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: r}}); err != nil {
		return err
	}
	c.handler.StatusSent(r)
	return nil
}

func (c *Client) recv(ctx context.Context, stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage], established *atomic.Bool) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		established.Store(true)
		switch k := msg.GetKind().(type) {
		case *droverv1.HubMessage_Assignment:
			c.received.Add(1)
			a := k.Assignment
			if err := c.handler.Assignment(ctx, a); err != nil {
				c.log.Warn("assignment rejected", "version", a.GetVersion(), "err", err)
				c.Ack(a.GetVersion(), a.GetNonce(), err)
			}
		case *droverv1.HubMessage_Command:
			c.handler.Command(ctx, k.Command)
		case *droverv1.HubMessage_Ping:
			// Receiving it is the point: the connection is alive.
		default:
			c.log.Warn("unknown message from the hub; ignored")
		}
	}
}

// jitter spreads d by ±10% so a fleet started together does not act
// together.
func jitter(d time.Duration) time.Duration {
	return backoff.Jitter(d, 0.1)
}

// ReadCA reads a PEM CA file.
func ReadCA(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read hub CA: %w", err)
	}
	return b, nil
}
