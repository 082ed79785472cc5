package agentapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/agentapi"
	"github.com/drover-dev/drover/hub/control"
	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/gitwatch"
	"github.com/drover-dev/drover/hub/pki"
	"github.com/drover-dev/drover/hub/secrets"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// gatedStore is the real store whose certificate lookups wait until the
// gate is closed, so a test can hold a stream inside its initial sync (and
// so hold its admission slot) for as long as it needs.
type gatedStore struct {
	*store.Store
	gate    chan struct{} // closed: lookups proceed
	entered chan string   // the cluster of each lookup, as it starts
}

func (g *gatedStore) ClusterCertSerial(ctx context.Context, name string) (string, bool, error) {
	g.entered <- name
	select {
	case <-g.gate:
	case <-ctx.Done():
		return "", false, ctx.Err()
	}
	return g.Store.ClusterCertSerial(ctx, name)
}

// testEndpoint is an agent endpoint on loopback TLS over the test bed's
// PostgreSQL.
type testEndpoint struct {
	addr  string
	ca    *pki.CA
	token string
	store *gatedStore
}

func startEndpoint(t *testing.T, cfg agentapi.Config) *testEndpoint {
	t.Helper()
	ctx := context.Background()
	logger := testlog.New(t)
	st, err := store.Open(ctx, testbed.Postgres(t), logger)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir, logger)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.LoadOrCreateServingCert(dir, []string{"127.0.0.1"}, logger)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := st.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Reusable: true}, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	gs := &gatedStore{Store: st, gate: make(chan struct{}), entered: make(chan string, 16)}
	fl := fleet.New(logger)
	box, err := secrets.LoadOrCreateKey(filepath.Join(dir, "secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := control.New(ctx, control.Config{Store: st, Fleet: fl, Secrets: box, Resolver: gitwatch.NewResolver(filepath.Join(dir, "git-cache"), logger), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	statuses := store.NewStatusWriter(st, logger, 0, 0)
	srv := agentapi.New(cfg, gs, ca, fl, ctl, statuses, logger)

	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS13,
	})
	srvGRPC := grpc.NewServer(grpc.Creds(creds))
	droverv1.RegisterAgentServiceServer(srvGRPC, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srvGRPC.Serve(lis) }()
	t.Cleanup(srvGRPC.Stop)
	return &testEndpoint{addr: lis.Addr().String(), ca: ca, token: token, store: gs}
}

// client dials the endpoint, with the agent's certificate when given one.
func (e *testEndpoint) client(t *testing.T, cert *tls.Certificate) droverv1.AgentServiceClient {
	t.Helper()
	tc := &tls.Config{RootCAs: e.ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return droverv1.NewAgentServiceClient(conn)
}

func (e *testEndpoint) registerReq(t *testing.T, name string) (*droverv1.RegisterRequest, *ecdsa.PrivateKey) {
	t.Helper()
	key, csr, err := testbed.NewCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	return &droverv1.RegisterRequest{JoinToken: e.token, ClusterName: name, CsrPem: csr}, key
}

// register registers name and returns its client certificate.
func (e *testEndpoint) register(t *testing.T, name string) *tls.Certificate {
	t.Helper()
	req, key := e.registerReq(t, name)
	resp, err := e.client(t, nil).Register(context.Background(), req)
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return certOf(t, resp, key)
}

func certOf(t *testing.T, resp *droverv1.RegisterResponse, key *ecdsa.PrivateKey) *tls.Certificate {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(resp.GetCertificatePem(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}

// connect opens a stream, says Hello and returns the stream.
func connect(t *testing.T, c droverv1.AgentServiceClient) grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage] {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.Connect(ctx)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if err := s.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: &droverv1.Hello{AgentVersion: "test"}}}); err != nil {
		t.Fatalf("hello: %v", err)
	}
	return s
}

// wantRefused checks err is an admission refusal with a retry delay.
func wantRefused(t *testing.T, what string, err error) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("%s: got %v, want ResourceExhausted", what, err)
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return
		}
	}
	t.Fatalf("%s: refusal %v carries no retry delay", what, err)
}

func TestAdmissionRefusesWhileFullThenAdmitsEveryone(t *testing.T) {
	e := startEndpoint(t, agentapi.Config{MaxAdmissions: 1, AdmissionWait: time.Millisecond, RetryAfter: time.Second})
	certA, certB := e.register(t, "alpha"), e.register(t, "bravo")
	clientA, clientB := e.client(t, certA), e.client(t, certB)

	// alpha's initial sync takes the only slot and stays in it (the gate
	// is closed until the test opens it).
	streamA := connect(t, clientA)
	if got := <-e.store.entered; got != "alpha" {
		t.Fatalf("certificate lookup for %q, want alpha", got)
	}

	// Everyone else arriving meanwhile is refused, streams and
	// registrations alike, and nothing of theirs is recorded.
	_, err := connect(t, clientB).Recv()
	wantRefused(t, "bravo's stream", err)
	reqC, keyC := e.registerReq(t, "charlie")
	_, err = e.client(t, nil).Register(context.Background(), reqC)
	wantRefused(t, "charlie's registration", err)
	if _, _, err := e.store.Store.ClusterCertSerial(context.Background(), "charlie"); err == nil {
		t.Fatal("a refused registration created its cluster")
	}

	// Once alpha is in, the others get in on their retry.
	close(e.store.gate)
	if m, err := streamA.Recv(); err != nil || m.GetAssignment() == nil {
		t.Fatalf("alpha: got %v, %v; want its first assignment", m, err)
	}
	if m, err := connect(t, clientB).Recv(); err != nil || m.GetAssignment() == nil {
		t.Fatalf("bravo's retry: got %v, %v; want its first assignment", m, err)
	}
	resp, err := e.client(t, nil).Register(context.Background(), reqC)
	if err != nil {
		t.Fatalf("charlie's retry: %v", err)
	}
	if m, err := connect(t, e.client(t, certOf(t, resp, keyC))).Recv(); err != nil || m.GetAssignment() == nil {
		t.Fatalf("charlie: got %v, %v; want its first assignment", m, err)
	}
}
