package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

type testHub struct {
	*server.Hub
	token string
	cfg   server.Config
}

func startHub(t testing.TB, mutate ...func(*server.Config)) *testHub {
	t.Helper()
	return startHubLogging(t, testlog.New(t), mutate...)
}

// startHubLogging is startHub with the hub logging to logger.
func startHubLogging(t testing.TB, logger *slog.Logger, mutate ...func(*server.Config)) *testHub {
	t.Helper()
	return startHubWriting(t, logger, io.Discard, mutate...)
}

// startHubWriting is startHubLogging with the hub's messages to the
// operator (server.Start's out) written to out.
func startHubWriting(t testing.TB, logger *slog.Logger, out io.Writer, mutate ...func(*server.Config)) *testHub {
	t.Helper()
	dir, err := os.MkdirTemp("", "drover-hub-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.DatabaseURL = testbed.Postgres(t)
	cfg.AgentAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Hostnames = []string{"127.0.0.1", "localhost"}
	cfg.PollInterval = 5 * time.Second
	for _, m := range mutate {
		m(&cfg)
	}
	h, err := server.Start(context.Background(), cfg, logger, out)
	if err != nil {
		t.Fatalf("start hub: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin-token"))
	if err != nil {
		t.Fatalf("read admin token: %v", err)
	}
	return &testHub{Hub: h, token: strings.TrimSpace(string(tok)), cfg: cfg}
}

// api calls the JSON admin API and decodes the reply into out (a proto
// message) when the status is 2xx. It returns the HTTP status and body.
func (h *testHub) api(t *testing.T, token, method, path string, body any, out proto.Message) (int, string) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case proto.Message:
		j, err := protojson.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://"+h.HTTPAddr()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 {
		if err := protojson.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, string(raw)
}

func (h *testHub) mustAPI(t *testing.T, method, path string, body any, out proto.Message) {
	t.Helper()
	if code, raw := h.api(t, h.token, method, path, body, out); code/100 != 2 {
		t.Fatalf("%s %s: HTTP %d: %s", method, path, code, raw)
	}
}

func (h *testHub) joinToken(t *testing.T, req *droverv1.CreateJoinTokenRequest) string {
	t.Helper()
	var resp droverv1.CreateJoinTokenResponse
	h.mustAPI(t, "POST", "/api/v1/join-tokens", req, &resp)
	return resp.GetToken()
}

// testAgent speaks the agent protocol by hand, so tests control every
// message.
type testAgent struct {
	name   string
	key    *ecdsa.PrivateKey
	cert   tls.Certificate
	caPool *x509.CertPool
	hub    *testHub
}

func newCSR(t *testing.T, name string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, csr, err := testbed.NewCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

// serverTLS trusts the hub's CA only, as an agent does on first start.
func (h *testHub) serverTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.CACertPEM())
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
}

func (h *testHub) agentConn(t *testing.T, tc *tls.Config) droverv1.AgentServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(h.AgentAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return droverv1.NewAgentServiceClient(conn)
}

func (h *testHub) register(t *testing.T, token, name string) (*testAgent, error) {
	t.Helper()
	key, csr := newCSR(t, name)
	resp, err := h.agentConn(t, h.serverTLS()).Register(context.Background(), &droverv1.RegisterRequest{JoinToken: token, ClusterName: name, CsrPem: csr})
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(resp.GetCertificatePem(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatalf("agent certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(resp.GetCaPem())
	return &testAgent{name: name, key: key, cert: cert, caPool: pool, hub: h}, nil
}

func (h *testHub) mustRegister(t *testing.T, token, name string) *testAgent {
	t.Helper()
	a, err := h.register(t, token, name)
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return a
}

// stream is one Connect session of a test agent; received messages arrive
// on msgs.
type stream struct {
	s      grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage]
	cancel context.CancelFunc
	msgs   chan *droverv1.HubMessage
	errc   chan error
}

func (a *testAgent) tlsConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{a.cert}, RootCAs: a.caPool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
}

func (a *testAgent) connect(t *testing.T, applied string) *stream {
	t.Helper()
	return a.connectWith(t, a.tlsConfig(), applied)
}

func (a *testAgent) connectWith(t *testing.T, tc *tls.Config, applied string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := a.hub.agentConn(t, tc).Connect(ctx)
	if err != nil {
		cancel()
		t.Fatalf("connect: %v", err)
	}
	st := &stream{s: s, cancel: cancel, msgs: make(chan *droverv1.HubMessage, 64), errc: make(chan error, 1)}
	t.Cleanup(cancel)
	if err := s.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: &droverv1.Hello{
		AgentVersion: "test", AppliedAssignmentVersion: applied,
		Facts: &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "test"},
	}}}); err != nil {
		t.Fatalf("hello: %v", err)
	}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				st.errc <- err
				return
			}
			st.msgs <- m
		}
	}()
	return st
}

// nextAssignment waits for the next assignment, skipping pings.
func (s *stream) nextAssignment(t *testing.T) *droverv1.Assignment {
	t.Helper()
	return s.next(t, "an assignment", func(m *droverv1.HubMessage) bool { return m.GetAssignment() != nil }).GetAssignment()
}

// nextCommand waits for the next command, skipping pings and assignments.
func (s *stream) nextCommand(t *testing.T) *droverv1.Command {
	t.Helper()
	return s.next(t, "a command", func(m *droverv1.HubMessage) bool { return m.GetCommand() != nil }).GetCommand()
}

// next waits for the next message that is what, skipping the others.
func (s *stream) next(t *testing.T, what string, is func(*droverv1.HubMessage) bool) *droverv1.HubMessage {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-s.msgs:
			if is(m) {
				return m
			}
		case err := <-s.errc:
			t.Fatalf("stream ended while waiting for %s: %v", what, err)
		case <-deadline:
			t.Fatalf("%s did not come within 30s", what)
		}
	}
}

func (s *stream) send(t *testing.T, m *droverv1.AgentMessage) {
	t.Helper()
	if err := s.s.Send(m); err != nil {
		t.Fatalf("send: %v", err)
	}
}

func (s *stream) ack(t *testing.T, a *droverv1.Assignment, nackErr string) {
	t.Helper()
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Ack{Ack: &droverv1.AssignmentAck{Version: a.GetVersion(), Nonce: a.GetNonce(), Error: nackErr}}})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
