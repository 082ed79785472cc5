// Package agentapi serves Drover's AgentService: agents register with a join
// token and a CSR, then hold one mutually authenticated Connect stream over
// which the hub pushes their assignment and they send ACK/NACKs, status and
// heartbeats.
//
// The cluster identity of a stream comes only from its verified client
// certificate; every message on it is authorised against that identity.
package agentapi

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/pki"
	"github.com/drover-dev/drover/hub/spec"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Store is what the agent endpoint needs from the database.
type Store interface {
	CreateClusterWithJoinToken(ctx context.Context, token, name, certSerial string, now time.Time) (*droverv1.Cluster, error)
	ClusterCertSerial(ctx context.Context, name string) (serial string, revoked bool, err error)
	MarkConnected(ctx context.Context, name, replica, peerAddr string, facts *droverv1.ClusterFacts, now time.Time) error
	RecordAck(ctx context.Context, name, version, nackErr string, now time.Time) error
	TouchLastSeen(ctx context.Context, names []string, now time.Time) error
	AddEvent(ctx context.Context, e *droverv1.Event) error
	// Removing reports whether the hub waits for the cluster's agent to
	// confirm it removed some application.
	Removing(ctx context.Context, cluster string) (bool, error)
}

// Signer issues agent certificates.
type Signer interface {
	SignAgentCSR(csrPEM []byte, clusterName string, validity time.Duration) (certPEM []byte, serial string, notAfter time.Time, err error)
	CertPEM() []byte
}

// Fleet is the hub's in-memory fleet, read only: where a stream reads its
// cluster's assignment and learns of new clusters.
type Fleet interface {
	Watch(cluster string) (*fleet.Snapshot, <-chan struct{})
	Assignment(cluster string) *droverv1.Assignment
}

// Controller is the hub's control logic, the fleet's only writer: Register
// tells it of each cluster it has stored, and it places the cluster.
type Controller interface {
	ClusterChanged(ctx context.Context, name string)
}

// StatusSink takes validated statuses; it batches and coalesces them and
// must not block for long. It owns the statuses handed to it.
type StatusSink interface {
	Enqueue(st *droverv1.ApplicationStatus) bool
	// EnqueueFull takes a cluster's full report: statuses of applications
	// neither in sts nor in keep are deleted.
	EnqueueFull(cluster string, sts []*droverv1.ApplicationStatus, keep []string) bool
	// EnqueueRemoved takes the applications the cluster's agent removed:
	// their statuses there are deleted.
	EnqueueRemoved(cluster string, apps []string)
}

// Config tunes the agent endpoint. Zero values take the defaults.
type Config struct {
	// Replica names this hub process in cluster records.
	Replica string
	// CertValidity is the lifetime of issued agent certificates.
	CertValidity time.Duration
	// HelloTimeout bounds the wait for a new stream's Hello.
	HelloTimeout time.Duration
	// PingInterval is how often the hub pings an idle stream.
	PingInterval time.Duration
	// LastSeenFlush is how often batched last-seen times are written.
	LastSeenFlush time.Duration
	// StatusRate and StatusBurst bound status messages per stream per
	// second; a faster agent is slowed down (its stream is not read), not
	// dropped.
	StatusRate  float64
	StatusBurst int
	// MaxResources bounds resources per application status.
	MaxResources int
	// MaxRemoved bounds the removed applications one status report may
	// name; the rest are ignored (a full report catches up).
	MaxRemoved int
	// MaxAdmissions bounds the registrations and initial stream syncs
	// (certificate check, connection record) in progress at once; see
	// admission.
	MaxAdmissions int
	// AdmissionWait is how long an arriving agent queues for an
	// admission slot before it is refused with ResourceExhausted.
	AdmissionWait time.Duration
	// RetryAfter is the delay suggested to refused agents (jittered).
	RetryAfter time.Duration
}

func (c *Config) setDefaults() {
	if c.Replica == "" {
		c.Replica = "hub"
	}
	if c.CertValidity <= 0 {
		c.CertValidity = 365 * 24 * time.Hour
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 30 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 60 * time.Second
	}
	if c.LastSeenFlush <= 0 {
		c.LastSeenFlush = 5 * time.Second
	}
	if c.StatusRate <= 0 {
		c.StatusRate = 20
	}
	if c.StatusBurst <= 0 {
		c.StatusBurst = 50
	}
	if c.MaxResources <= 0 {
		c.MaxResources = 10000
	}
	if c.MaxRemoved <= 0 {
		c.MaxRemoved = 1000
	}
	if c.MaxAdmissions <= 0 {
		c.MaxAdmissions = 32
	}
	if c.AdmissionWait <= 0 {
		c.AdmissionWait = 2 * time.Second
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = 5 * time.Second
	}
}

// Server implements droverv1.AgentServiceServer.
type Server struct {
	droverv1.UnimplementedAgentServiceServer

	cfg      Config
	store    Store
	signer   Signer
	fleet    Fleet
	ctl      Controller
	statuses StatusSink
	log      *slog.Logger
	now      func() time.Time

	sessions *sessions
	seen     *lastSeen
	answers  *unrecorded
	admit    *admission
}

var _ droverv1.AgentServiceServer = (*Server)(nil)

// New returns an agent endpoint. Run must be running for last-seen times to
// reach the store.
func New(cfg Config, st Store, signer Signer, fl Fleet, ctl Controller, statuses StatusSink, logger *slog.Logger) *Server {
	cfg.setDefaults()
	return &Server{
		cfg:      cfg,
		store:    st,
		signer:   signer,
		fleet:    fl,
		ctl:      ctl,
		statuses: statuses,
		log:      logger,
		now:      time.Now,
		sessions: newSessions(),
		seen:     newLastSeen(),
		answers:  newUnrecorded(),
		admit:    newAdmission(cfg.MaxAdmissions, cfg.AdmissionWait, cfg.RetryAfter),
	}
}

// Run writes batched last-seen times, and the assignment answers the store
// could not take when they arrived, until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.LastSeenFlush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// One last flush so a clean shutdown loses no heartbeat.
			s.flushSeen(context.WithoutCancel(ctx))
			s.flushAnswers(context.WithoutCancel(ctx))
			return nil
		case <-t.C:
			s.flushSeen(ctx)
			s.flushAnswers(ctx)
		}
	}
}

func (s *Server) flushSeen(ctx context.Context) {
	names, at := s.seen.drain()
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.store.TouchLastSeen(ctx, names, at); err != nil {
		// Put them back: the next flush retries with the newest time (the
		// last one at shutdown, if this one was cut short by it).
		s.seen.touch(names...)
		if ctx.Err() == nil {
			s.log.Warn("record last seen", "clusters", len(names), "err", err)
		}
	}
}

// flushAnswers records the answers held since the store refused them;
// those it refuses again wait for the next flush.
func (s *Server) flushAnswers(ctx context.Context) {
	held := s.answers.take()
	defer s.answers.done(held)
	if len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	failed := 0
	for name, a := range held {
		err := s.store.RecordAck(ctx, name, a.version, a.nackErr, a.at)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.answers.keep(name, a)
			failed++
		}
	}
	if failed > 0 && ctx.Err() == nil {
		s.log.Warn("record held assignment answers", "clusters", failed, "of", len(held))
	} else if failed == 0 {
		s.log.Info("recorded held assignment answers", "clusters", len(held))
	}
}

// Connected reports how many agent streams this replica holds.
func (s *Server) Connected() int { return s.sessions.count() }

// Clusters lists the clusters whose live streams this replica holds, in
// no order.
func (s *Server) Clusters() []string { return s.sessions.clusters() }

// Disconnect closes the live stream of a cluster, if this replica holds
// one; used when its certificate is revoked or the cluster is deleted.
func (s *Server) Disconnect(cluster string, reason error) {
	if sess := s.sessions.get(cluster); sess != nil {
		sess.cancel(reason)
	}
}

// Shed ends up to n of the agent streams this replica holds, the longest
// held first, and reports how many. Each agent is told to come back after
// about hint, and goes to another replica when it has one: the streams
// that moved here last are the last shed, so load moved between replicas
// does not move the same agents again and again. A hint of zero lets
// them come back at once.
func (s *Server) Shed(n int, hint time.Duration) int {
	if n <= 0 {
		return 0
	}
	hint = max(hint, 0)
	ended := s.sessions.ending(n)
	for _, sess := range ended {
		sess.cancel(&shedError{hint: hint})
	}
	if len(ended) > 0 {
		s.log.Info("shedding agent streams", "streams", len(ended), "retry_after", hint)
	}
	return len(ended)
}

// shedError is the cause of a stream's end that Shed chose.
type shedError struct{ hint time.Duration }

func (e *shedError) Error() string { return "shed to spread the load over the hub's replicas" }

// status tells the agent to go to another replica after about the hint.
func (e *shedError) status() error {
	return retryLater(codes.Unavailable, "this hub replica is shedding load; connect to another in %v", e.hint)
}

// SendCommand hands a command to the cluster's stream. It reports false when
// this replica holds no stream for the cluster or its command buffer is
// full (commands are hints; the periodic resync catches up).
func (s *Server) SendCommand(cluster string, cmd *droverv1.Command) bool {
	sess := s.sessions.get(cluster)
	if sess == nil {
		return false
	}
	select {
	case sess.commands <- commandMsg{cmd}:
		return true
	default:
		return false
	}
}

type commandMsg struct{ cmd *droverv1.Command }

// Register exchanges a join token and a CSR for a client certificate.
func (s *Server) Register(ctx context.Context, req *droverv1.RegisterRequest) (*droverv1.RegisterResponse, error) {
	name := req.GetClusterName()
	if err := pki.ValidClusterName(name); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cluster_name: %v", err)
	}
	if req.GetJoinToken() == "" {
		return nil, status.Error(codes.InvalidArgument, "join_token: required")
	}
	if len(req.GetCsrPem()) == 0 || len(req.GetCsrPem()) > 16<<10 {
		return nil, status.Error(codes.InvalidArgument, "csr_pem: required, at most 16 KiB")
	}
	release, err := s.admit.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	// Signing first is harmless: a certificate is only handed out once the
	// token has been accepted, and the serial must be stored with the
	// cluster in the same transaction that uses the token.
	certPEM, serial, _, err := s.signer.SignAgentCSR(req.GetCsrPem(), name, s.cfg.CertValidity)
	if err != nil {
		s.audit(ctx, "cluster.register_refused", name, fmt.Sprintf("certificate request refused: %v", err))
		if errors.Is(err, pki.ErrNameMismatch) || errors.Is(err, pki.ErrInvalidCSR) || errors.Is(err, pki.ErrInvalidClusterName) {
			return nil, status.Errorf(codes.InvalidArgument, "csr_pem: %v", err)
		}
		s.log.Error("sign agent certificate", "cluster", name, "err", err)
		return nil, status.Error(codes.Internal, "could not sign the certificate; the hub logged why")
	}
	cl, err := s.store.CreateClusterWithJoinToken(ctx, req.GetJoinToken(), name, serial, s.now())
	switch {
	case errors.Is(err, store.ErrTokenInvalid):
		s.audit(ctx, "cluster.register_refused", name, fmt.Sprintf("join token refused: %v", err))
		return nil, status.Errorf(codes.PermissionDenied, "join token refused: %v", err)
	case errors.Is(err, store.ErrConflict):
		s.audit(ctx, "cluster.register_refused", name, "a cluster with this name is already registered")
		return nil, status.Errorf(codes.AlreadyExists, "cluster %q is already registered; delete it first to register it again", name)
	case err != nil:
		s.log.Error("register cluster", "cluster", name, "err", err)
		return nil, status.Error(codes.Unavailable, "could not register the cluster; try again")
	}
	s.ctl.ClusterChanged(ctx, cl.GetName())
	s.audit(ctx, "cluster.registered", name, "registered with a join token")
	s.log.Info("cluster registered", "cluster", name)
	return &droverv1.RegisterResponse{CertificatePem: certPEM, CaPem: s.signer.CertPEM()}, nil
}

func (s *Server) audit(ctx context.Context, kind, cluster, msg string) {
	actor := "cluster:" + cluster
	if err := s.store.AddEvent(context.WithoutCancel(ctx), &droverv1.Event{
		Time: timestamppb.New(s.now()), Kind: kind, Actor: actor, Cluster: cluster, Message: msg,
	}); err != nil {
		s.log.Warn("record event", "kind", kind, "cluster", cluster, "err", err)
	}
}

// peerCertificate returns the stream's verified client certificate (the
// TLS layer checked it chains to the hub's CA) and the cluster it names.
func peerCertificate(ctx context.Context) (string, *x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return "", nil, status.Error(codes.Unauthenticated, "Connect needs a client certificate issued by this hub (register first)")
	}
	leaf := ti.State.VerifiedChains[0][0]
	name, err := pki.ClusterName(leaf)
	if err != nil {
		return "", nil, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	return name, leaf, nil
}

// checkCurrent checks that leaf is the cluster's current certificate and
// not revoked.
func (s *Server) checkCurrent(ctx context.Context, name string, leaf *x509.Certificate) error {
	serial, revoked, err := s.store.ClusterCertSerial(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.PermissionDenied, "cluster %q is not registered", name)
	case err != nil:
		s.log.Error("look up cluster certificate", "cluster", name, "err", err)
		return status.Error(codes.Unavailable, "could not check the certificate; try again")
	case revoked:
		return status.Errorf(codes.PermissionDenied, "the certificate of cluster %q is revoked", name)
	case serial != pki.Serial(leaf):
		return status.Errorf(codes.PermissionDenied, "the certificate of cluster %q has been replaced", name)
	}
	return nil
}

var errReplaced = errors.New("replaced by a newer stream of the same cluster")

// Connect is one agent session.
func (s *Server) Connect(stream grpc.BidiStreamingServer[droverv1.AgentMessage, droverv1.HubMessage]) error {
	name, leaf, err := peerCertificate(stream.Context())
	if err != nil {
		return err
	}
	// The database work of a new stream is admitted in two steps, with the
	// wait for Hello between them outside admission: an agent slow to send
	// it holds no slot, and a revoked one is told before it says anything.
	release, err := s.admit.acquire(stream.Context())
	if err != nil {
		return err
	}
	err = s.checkCurrent(stream.Context(), name, leaf)
	release()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	sess := &session{cluster: name, since: s.now(), cancel: cancel, commands: make(chan commandMsg, 8)}
	if old := s.sessions.add(sess); old != nil {
		old.cancel(errReplaced)
	}
	defer s.sessions.remove(sess)
	log := s.log.With("cluster", name)

	// A stream the hub ends before its Hello or admission says why, as
	// one it ends later does: a shed agent must get its hint either way.
	hello, err := s.recvHello(ctx, stream)
	if err != nil {
		return cmp.Or(endedByHub(ctx, log), err)
	}
	if release, err = s.admit.acquire(ctx); err != nil {
		return cmp.Or(endedByHub(ctx, log), err)
	}
	s.recordConnection(ctx, name, hello)
	s.resyncIfRemoving(ctx, name, sess)
	release()
	st := &streamState{sentVersion: hello.GetAppliedAssignmentVersion()}

	errc := make(chan error, 1)
	go func() { errc <- s.recvLoop(ctx, name, stream, st) }()

	err = s.sendLoop(ctx, name, stream, st, sess, errc)
	if ended := endedByHub(ctx, log); ended != nil {
		return ended
	}
	if err != nil && stream.Context().Err() == nil {
		log.Info("agent stream ended", "err", err)
	}
	return err
}

// endedByHub is the status of a stream the hub ended (the cause of its
// context: shed, replaced, or closed by Disconnect), or nil when the hub
// did not end it.
func endedByHub(ctx context.Context, log *slog.Logger) error {
	cause := context.Cause(ctx)
	var shed *shedError
	switch {
	case errors.As(cause, &shed):
		log.Info("agent stream shed", "retry_after", shed.hint)
		return shed.status()
	case errors.Is(cause, errReplaced):
		log.Info("agent stream replaced")
		return status.Error(codes.Aborted, errReplaced.Error())
	case cause != nil && !errors.Is(cause, context.Canceled):
		log.Info("agent stream closed", "reason", cause)
		return status.Error(codes.PermissionDenied, cause.Error())
	}
	return nil
}

// recordConnection stores that the cluster's stream is up. The first
// assignment is sent afterwards, outside admission: a send can wait on an
// agent that does not read, and must not hold a slot meanwhile.
func (s *Server) recordConnection(ctx context.Context, name string, hello *droverv1.Hello) {
	log := s.log.With("cluster", name)
	peerAddr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		peerAddr = p.Addr.String()
	}
	if err := s.store.MarkConnected(ctx, name, s.cfg.Replica, peerAddr, hello.GetFacts(), s.now()); err != nil {
		// The stream is still useful without the bookkeeping; last-seen
		// flushes will catch up when the database is back.
		log.Warn("record connection", "err", err)
	}
	log.Info("agent connected", "peer", peerAddr, "agent_version", hello.GetAgentVersion(), "applied", hello.GetAppliedAssignmentVersion())
}

// resyncIfRemoving asks the agent for a full report when the hub still
// waits for it to confirm some removal: an agent that removed an
// application and restarted before it said so has forgotten it, and only
// a full report (which no longer lists it) tells the hub. The command is
// queued on the new session, so it follows the first assignment.
func (s *Server) resyncIfRemoving(ctx context.Context, name string, sess *session) {
	removing, err := s.store.Removing(ctx, name)
	if err != nil {
		// The periodic full report catches up.
		s.log.Warn("look for removals to confirm", "cluster", name, "err", err)
		return
	}
	if !removing {
		return
	}
	select {
	case sess.commands <- commandMsg{&droverv1.Command{Type: droverv1.CommandType_COMMAND_TYPE_RESYNC_STATUS}}:
	default:
		// Commands are hints (SendCommand): the periodic full report
		// catches up.
	}
}

func (s *Server) recvHello(ctx context.Context, stream grpc.BidiStreamingServer[droverv1.AgentMessage, droverv1.HubMessage]) (*droverv1.Hello, error) {
	type result struct {
		msg *droverv1.AgentMessage
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	timer := time.NewTimer(s.cfg.HelloTimeout)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-timer.C:
		return nil, status.Error(codes.DeadlineExceeded, "no Hello within the timeout")
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		h := r.msg.GetHello()
		if h == nil {
			return nil, status.Error(codes.InvalidArgument, "the first message of a stream must be Hello")
		}
		return h, nil
	}
}

// streamState is shared by a stream's send and receive loops.
type streamState struct {
	mu sync.Mutex // guards the fields below
	// sentVersion and sentNonce identify the assignment the agent has or
	// was last sent: from Hello at first, then from every send. The hub
	// sends again only when the cluster's assignment differs from it, so a
	// rejected version is not resent either.
	sentVersion, sentNonce string
}

func (s *Server) sendLoop(ctx context.Context, name string, stream grpc.BidiStreamingServer[droverv1.AgentMessage, droverv1.HubMessage], st *streamState, sess *session, recvErr <-chan error) error {
	ping := time.NewTicker(s.cfg.PingInterval)
	defer ping.Stop()
	sendPing := func() error {
		return stream.Send(&droverv1.HubMessage{Kind: &droverv1.HubMessage_Ping{Ping: &droverv1.Ping{SentAt: timestamppb.New(s.now())}}})
	}
	answered := false
	for {
		snap, changed := s.fleet.Watch(name)
		if snap != nil {
			if msg := st.next(snap); msg != nil {
				if err := stream.Send(&droverv1.HubMessage{Kind: &droverv1.HubMessage_Assignment{Assignment: msg}}); err != nil {
					return err
				}
				answered = true
			}
		}
		// The agent counts its session as up once the hub says
		// something; an agent that has its assignment already (a
		// reconnect, or a move from another replica) is told at once
		// rather than at the first ping.
		if !answered {
			if err := sendPing(); err != nil {
				return err
			}
			answered = true
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			return err
		case <-changed:
		case c := <-sess.commands:
			if err := stream.Send(&droverv1.HubMessage{Kind: &droverv1.HubMessage_Command{Command: c.cmd}}); err != nil {
				return err
			}
		case <-ping.C:
			if err := sendPing(); err != nil {
				return err
			}
		}
	}
}

// next returns the assignment to send for snap, or nil when the agent
// already has it or was already sent it.
func (st *streamState) next(snap *fleet.Snapshot) *droverv1.Assignment {
	st.mu.Lock()
	defer st.mu.Unlock()
	if snap.Version == st.sentVersion {
		return nil
	}
	nonce := newNonce()
	st.sentVersion, st.sentNonce = snap.Version, nonce
	// The snapshot is shared and immutable; send a shallow copy carrying
	// this stream's nonce.
	return &droverv1.Assignment{Version: snap.Version, Nonce: nonce, Applications: snap.Assignment.GetApplications()}
}

func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Server) recvLoop(ctx context.Context, name string, stream grpc.BidiStreamingServer[droverv1.AgentMessage, droverv1.HubMessage], st *streamState) error {
	limiter := rate.NewLimiter(rate.Limit(s.cfg.StatusRate), s.cfg.StatusBurst)
	log := s.log.With("cluster", name)
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		switch k := msg.GetKind().(type) {
		case *droverv1.AgentMessage_Ack:
			s.handleAck(ctx, name, k.Ack, st, log)
		case *droverv1.AgentMessage_Status:
			// Waiting here stops reading the stream, which pushes back on
			// the agent through flow control instead of buffering.
			if err := limiter.Wait(ctx); err != nil {
				return nil
			}
			s.handleStatus(ctx, name, k.Status, log)
		case *droverv1.AgentMessage_Heartbeat:
			s.seen.touch(name)
		case *droverv1.AgentMessage_Hello:
			log.Warn("unexpected Hello in the middle of a stream; ignored")
		default:
			// A newer agent may send kinds this hub does not know.
			log.Warn("unknown agent message; ignored")
		}
	}
}

func (s *Server) handleAck(ctx context.Context, name string, ack *droverv1.AssignmentAck, st *streamState, log *slog.Logger) {
	st.mu.Lock()
	if ack.GetNonce() != st.sentNonce || ack.GetVersion() != st.sentVersion {
		st.mu.Unlock()
		// An answer to an older send; the newer one is what counts.
		log.Debug("stale assignment answer ignored", "version", ack.GetVersion())
		return
	}
	st.mu.Unlock()
	s.seen.touch(name)
	a := answer{version: ack.GetVersion(), nackErr: truncate(ack.GetError(), 4096), at: s.now()}
	if !s.answers.queue(name, a) {
		switch err := s.store.RecordAck(ctx, name, a.version, a.nackErr, a.at); {
		case errors.Is(err, store.ErrNotFound):
			log.Warn("assignment answer of a cluster deleted meanwhile; dropped")
		case err != nil:
			// The agent will not answer this version again: hold the
			// answer for the next flush rather than lose it.
			s.answers.keep(name, a)
			log.Warn("record assignment answer; retrying", "err", err)
		}
	}
	nackErr := a.nackErr
	if nackErr != "" {
		log.Warn("agent rejected its assignment", "version", ack.GetVersion(), "reason", nackErr)
		s.audit(ctx, "cluster.assignment_rejected", name, nackErr)
	}
}

func (s *Server) handleStatus(ctx context.Context, name string, rep *droverv1.StatusReport, log *slog.Logger) {
	s.seen.touch(name)
	assigned := make(map[string]bool)
	for _, a := range s.fleet.Assignment(name).GetApplications() {
		assigned[a.GetName()] = true
	}
	s.handleRemoved(name, rep.GetRemoved(), assigned, log)
	valid := make([]*droverv1.ApplicationStatus, 0, len(rep.GetApplications()))
	for _, as := range rep.GetApplications() {
		app := as.GetApplication()
		if !assigned[app] {
			log.Warn("status for an application not assigned to this cluster rejected", "app", truncate(app, 100))
			continue
		}
		if err := s.validateStatus(as); err != nil {
			log.Warn("invalid status rejected", "app", app, "err", err)
			continue
		}
		as.Cluster = name
		if as.ObservedAt == nil {
			as.ObservedAt = timestamppb.New(s.now())
		}
		valid = append(valid, as)
	}
	ok := true
	if rep.GetFull() {
		// What is assigned stays whether or not the report lists it: an
		// agent that has not reconciled an application since it started
		// has no status of it yet, and a status it has not recomputed is
		// still the best the hub knows.
		ok = s.statuses.EnqueueFull(name, valid, slices.Collect(maps.Keys(assigned)))
	} else {
		for _, as := range valid {
			ok = s.statuses.Enqueue(as) && ok
		}
	}
	if !ok {
		log.Warn("status backlog full; statuses dropped until the database catches up")
	}
}

// handleRemoved forgets the statuses of the applications the agent says
// it removed, except those assigned to the cluster (again): that status
// is the new placement's, and the agent reports it once it applied it.
func (s *Server) handleRemoved(name string, removed []string, assigned map[string]bool, log *slog.Logger) {
	if len(removed) == 0 {
		return
	}
	if len(removed) > s.cfg.MaxRemoved {
		log.Warn("status report names too many removed applications; the rest are ignored", "removed", len(removed), "max", s.cfg.MaxRemoved)
		removed = removed[:s.cfg.MaxRemoved]
	}
	apps := make([]string, 0, len(removed))
	for _, app := range removed {
		switch err := spec.ValidateName(app); {
		case err != nil:
			log.Warn("invalid removed application name rejected", "app", truncate(app, 100), "err", err)
		case assigned[app]:
			log.Debug("removal of an application assigned again ignored", "app", app)
		default:
			apps = append(apps, app)
		}
	}
	if len(apps) > 0 {
		s.statuses.EnqueueRemoved(name, apps)
	}
}

func (s *Server) validateStatus(as *droverv1.ApplicationStatus) error {
	if _, ok := droverv1.SyncState_name[int32(as.GetSync())]; !ok {
		return fmt.Errorf("unknown sync state %d", as.GetSync())
	}
	if _, ok := droverv1.Health_name[int32(as.GetHealth())]; !ok {
		return fmt.Errorf("unknown health %d", as.GetHealth())
	}
	if len(as.GetResources()) > s.cfg.MaxResources {
		return fmt.Errorf("%d resources, at most %d", len(as.GetResources()), s.cfg.MaxResources)
	}
	for i, r := range as.GetResources() {
		if _, ok := droverv1.Health_name[int32(r.GetHealth())]; !ok {
			return fmt.Errorf("resources[%d]: unknown health %d", i, r.GetHealth())
		}
		r.Message = truncate(r.GetMessage(), 1024)
	}
	as.Message = truncate(as.GetMessage(), 4096)
	// Empty before an application's first apply; otherwise what the
	// agent was assigned, a commit SHA or a chart's or artifact's
	// revision.
	if c := as.GetCommit(); c != "" {
		if err := spec.ValidateRevision(c); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
