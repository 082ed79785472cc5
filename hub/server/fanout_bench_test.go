//go:build unix

// The benchmark raises the open-file limit with setrlimit, which only Unix
// has; the hub runs on Linux.

package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/e2e/loadtest"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

const (
	// fanoutAgents is the fleet size BenchmarkFanout1000 measures.
	fanoutAgents = 1000
	// fanoutParallel bounds concurrent registrations and stream opens:
	// each costs a CSR signature or a TLS handshake plus database
	// round trips, and the point is to measure the fan-out, not a
	// thundering herd at setup.
	fanoutParallel = 16
	// fanoutPatience bounds every wait of the benchmark, so that a hub
	// that loses an assignment fails it instead of hanging until the test
	// binary's timeout. It is not a performance expectation.
	fanoutPatience = 5 * time.Minute
)

// BenchmarkFanout1000 measures how long one change to an application
// placed on 1,000 clusters takes to reach every cluster's agent. The agents
// are hand-written, as in protocol_test.go: each holds a real mTLS Connect
// stream on its own connection and records when each assignment arrives.
//
// The application is created, and its Git ref resolved, before the timer
// starts; each measured iteration is one change of
// spec.syncPolicy.interval, which changes every cluster's assignment.
// Latencies run from just before the API call to the arrival at each agent.
// Reported: p50-ms, p99-ms and max-ms over every (iteration, agent)
// arrival, and all-ms, the mean over iterations of the time until the last
// agent had its assignment.
//
// Every agent must receive exactly one new version per change, with the
// expected content, or the benchmark fails.
func BenchmarkFanout1000(b *testing.B) {
	testbed.RaiseOpenFileLimit(b, 8192)
	git := testbed.GitServer(b)
	repo := git.CreateRepo(b, "fleet")
	commit := repo.Commit(b, "web v1", map[string]string{"web/deploy.yaml": "kind: ConfigMap\n"})
	h := startFanoutHub(b)

	var tok droverv1.CreateJoinTokenResponse
	fanoutCall(b, h, "POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{
		Reusable: true, Labels: map[string]string{"env": "bench"},
	}, &tok)
	f := startFanout(b, h, tok.GetToken(), fanoutAgents)

	// A new cluster's first assignment is empty; ACK it as an agent would,
	// so the measured changes start from a settled fleet.
	f.await(b, 1)
	f.check(b, 1, func(a *droverv1.Assignment) error {
		if n := len(a.GetApplications()); n != 0 {
			return fmt.Errorf("%d applications, want none", n)
		}
		return nil
	})
	f.ackAll(b)

	app := webApp("web", repo.URL, map[string]string{"env": "bench"})
	// want is each agent's expected number of assignments so far: the
	// empty first one, then one per change.
	want := 2
	fanoutCall(b, h, "POST", "/api/v1/applications", app, nil)
	f.await(b, want)
	f.check(b, want, webAssignment(commit, ""))
	f.ackAll(b)

	var (
		latencies []time.Duration // of every agent in every iteration
		lastTotal time.Duration   // sum over iterations of the slowest agent
		changes   int
	)
	// b.Loop rather than a loop to b.N: the function runs once, so the
	// 1,000 agents are set up once, not again after a b.N=1 probe run;
	// and the timer starts at its first call, after the setup above.
	for b.Loop() {
		changes++
		want++
		app.Spec.SyncPolicy.Interval = fmt.Sprintf("%dm", changes)
		start := time.Now()
		fanoutCall(b, h, "PUT", "/api/v1/applications/web", app, nil)
		called := time.Since(start)
		f.await(b, want)

		b.StopTimer()
		f.check(b, want, webAssignment(commit, app.Spec.SyncPolicy.Interval))
		lat := f.latencies(start, want)
		latencies = append(latencies, lat...)
		slices.Sort(lat)
		lastTotal += lat[len(lat)-1]
		b.Logf("change %d: API call %v; per agent first %v, p50 %v, p99 %v; all %d agents %v",
			changes, called.Round(time.Millisecond), lat[0].Round(time.Millisecond),
			loadtest.Percentile(lat, 0.50).Round(time.Millisecond), loadtest.Percentile(lat, 0.99).Round(time.Millisecond),
			len(lat), lat[len(lat)-1].Round(time.Millisecond))
		f.ackAll(b)
		b.StartTimer()
	}

	// Each iteration's check catches duplicates of the change before it;
	// one more change, not measured, catches those of the last: a stream
	// delivers in order, so a duplicate sent before this change's
	// assignment has arrived by the time it has.
	app.Spec.SyncPolicy.Interval = fmt.Sprintf("%dm", changes+1)
	fanoutCall(b, h, "PUT", "/api/v1/applications/web", app, nil)
	f.await(b, want+1)
	f.check(b, want+1, webAssignment(commit, app.Spec.SyncPolicy.Interval))

	slices.Sort(latencies)
	b.ReportMetric(ms(loadtest.Percentile(latencies, 0.50)), "p50-ms")
	b.ReportMetric(ms(loadtest.Percentile(latencies, 0.99)), "p99-ms")
	b.ReportMetric(ms(latencies[len(latencies)-1]), "max-ms")
	b.ReportMetric(ms(lastTotal)/float64(changes), "all-ms")
}

// webAssignment checks that an assignment holds the web application alone,
// at commit, with sync interval interval.
func webAssignment(commit, interval string) func(*droverv1.Assignment) error {
	return func(a *droverv1.Assignment) error {
		apps := a.GetApplications()
		if len(apps) != 1 || apps[0].GetName() != "web" || apps[0].GetCommit() != commit ||
			apps[0].GetSyncPolicy().GetInterval() != interval {
			return fmt.Errorf("assignment %v, want web@%s with sync interval %q", apps, commit, interval)
		}
		return nil
	}
}

// startFanoutHub is startHub for a benchmark. The hub logs warnings and
// errors only: benchmark logs are always printed, and at info level 1,000
// agents registering and connecting would bury the results.
func startFanoutHub(b *testing.B) *testHub {
	b.Helper()
	return startHubLogging(b, testlog.NewAt(b, slog.LevelWarn))
}

// fanoutCall calls the JSON admin API as the admin, fails tb unless the
// reply is 2xx, and decodes it into out when out is not nil.
func fanoutCall(tb testing.TB, h *testHub, method, path string, body, out proto.Message) {
	tb.Helper()
	var rd io.Reader
	if body != nil {
		j, err := protojson.Marshal(body)
		if err != nil {
			tb.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://"+h.HTTPAddr()+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read reply: %v", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		tb.Fatalf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := protojson.Unmarshal(raw, out); err != nil {
			tb.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
}

// fanout is a fleet of benchmark agents, each with one live stream.
type fanout struct {
	h      *testHub
	agents []*fanoutAgent
	// arrived carries the index of an agent each time it receives an
	// assignment.
	arrived chan int
	// errc carries the end of any stream before the benchmark ends it.
	errc chan error
}

// fanoutAgent is a testAgent with its Connect stream.
type fanoutAgent struct {
	*testAgent
	conn   *grpc.ClientConn
	stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage]

	mu sync.Mutex // guards the fields below
	// got is every assignment received, in order.
	got []arrival
}

type arrival struct {
	assignment *droverv1.Assignment
	at         time.Time
}

// startFanout registers n agents with token and opens their streams. The
// streams end with the benchmark.
func startFanout(b *testing.B, h *testHub, token string, n int) *fanout {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fanout{h: h, agents: make([]*fanoutAgent, n), arrived: make(chan int, n), errc: make(chan error, n)}
	b.Cleanup(func() {
		// Cancel first, so that receivers take the streams' end for the
		// benchmark's, not an error.
		cancel()
		for _, a := range f.agents {
			if a != nil && a.conn != nil {
				a.conn.Close()
			}
		}
	})

	// Registration has no client certificate yet: one connection serves
	// every agent's.
	reg, err := grpc.NewClient(h.AgentAddr(), grpc.WithTransportCredentials(credentials.NewTLS(h.serverTLS())))
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	regClient := droverv1.NewAgentServiceClient(reg)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fanoutParallel)
	for i := range f.agents {
		g.Go(func() error {
			a, err := registerFanoutAgent(gctx, h, regClient, token, fmt.Sprintf("bench-%04d", i))
			if err != nil {
				return err
			}
			f.agents[i] = &fanoutAgent{testAgent: a}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}

	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(fanoutParallel)
	for i, a := range f.agents {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err // another agent failed
			}
			if err := a.connect(ctx); err != nil {
				return err
			}
			go a.receive(ctx, i, f.arrived, f.errc)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	return f
}

// registerFanoutAgent is testHub.register for goroutines that cannot fail
// the benchmark themselves.
func registerFanoutAgent(ctx context.Context, h *testHub, reg droverv1.AgentServiceClient, token, name string) (*testAgent, error) {
	key, csr, err := testbed.NewCSR(name)
	if err != nil {
		return nil, err
	}
	resp, err := reg.Register(ctx, &droverv1.RegisterRequest{JoinToken: token, ClusterName: name, CsrPem: csr})
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", name, err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(resp.GetCertificatePem(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		return nil, fmt.Errorf("agent %s certificate: %w", name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(resp.GetCaPem()) {
		return nil, fmt.Errorf("agent %s: the hub's CA is not PEM", name)
	}
	return &testAgent{name: name, key: key, cert: cert, caPool: pool, hub: h}, nil
}

// connect opens the agent's own connection to the hub with its
// certificate, and a stream that lives as long as ctx, and says Hello with
// nothing applied.
func (a *fanoutAgent) connect(ctx context.Context) error {
	conn, err := grpc.NewClient(a.hub.AgentAddr(), grpc.WithTransportCredentials(credentials.NewTLS(a.tlsConfig())))
	if err != nil {
		return err
	}
	a.conn = conn
	s, err := droverv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return fmt.Errorf("agent %s: connect: %w", a.name, err)
	}
	a.stream = s
	if err := s.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: &droverv1.Hello{
		AgentVersion: "bench",
		Facts:        &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "bench"},
	}}}); err != nil {
		return fmt.Errorf("agent %s: hello: %w", a.name, err)
	}
	return nil
}

// receive records every assignment the stream brings, with its arrival
// time taken first, and reports agent idx on arrived. It is the stream's
// only receiver and returns when the stream ends.
func (a *fanoutAgent) receive(ctx context.Context, idx int, arrived chan<- int, errc chan<- error) {
	for {
		m, err := a.stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				errc <- fmt.Errorf("agent %s: stream ended: %w", a.name, err) // one per agent; errc holds them all
			}
			return
		}
		at := time.Now()
		as := m.GetAssignment()
		if as == nil {
			continue // pings and commands
		}
		a.mu.Lock()
		a.got = append(a.got, arrival{assignment: as, at: at})
		a.mu.Unlock()
		select {
		case arrived <- idx:
		case <-ctx.Done():
			return
		}
	}
}

func (a *fanoutAgent) received() []arrival {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

// await waits until every agent has received want assignments in all.
func (f *fanout) await(b *testing.B, want int) {
	b.Helper()
	done := make([]bool, len(f.agents))
	remaining := 0
	for i, a := range f.agents {
		done[i] = len(a.received()) >= want
		if !done[i] {
			remaining++
		}
	}
	patience := time.NewTimer(fanoutPatience)
	defer patience.Stop()
	for remaining > 0 {
		select {
		case i := <-f.arrived:
			if !done[i] && len(f.agents[i].received()) >= want {
				done[i] = true
				remaining--
			}
		case err := <-f.errc:
			b.Fatal(err)
		case <-patience.C:
			b.Fatalf("%d of %d agents still wait for assignment #%d after %v", remaining, len(f.agents), want, fanoutPatience)
		}
	}
}

// check fails b unless every agent has received exactly want assignments,
// each with a version differing from the one before it, and, when content
// is not nil, the last one passes content.
func (f *fanout) check(b *testing.B, want int, content func(*droverv1.Assignment) error) {
	b.Helper()
	for _, a := range f.agents {
		got := a.received()
		if len(got) != want {
			versions := make([]string, len(got))
			for i, g := range got {
				versions[i] = g.assignment.GetVersion()
			}
			b.Fatalf("agent %s received %d assignments %v, want %d: one per change", a.name, len(got), versions, want)
		}
		for i := 1; i < len(got); i++ {
			if got[i].assignment.GetVersion() == got[i-1].assignment.GetVersion() {
				b.Fatalf("agent %s was sent version %s twice", a.name, got[i].assignment.GetVersion())
			}
		}
		if content != nil {
			if err := content(got[len(got)-1].assignment); err != nil {
				b.Fatalf("agent %s: %v", a.name, err)
			}
		}
	}
}

// latencies returns how long after start each agent received its
// assignment #n.
func (f *fanout) latencies(start time.Time, n int) []time.Duration {
	out := make([]time.Duration, len(f.agents))
	for i, a := range f.agents {
		out[i] = a.received()[n-1].at.Sub(start)
	}
	return out
}

// ackAll ACKs every agent's latest assignment and waits until the hub has
// recorded every ACK, so that the next change is not measured against
// 1,000 ACK writes still in flight.
func (f *fanout) ackAll(b *testing.B) {
	b.Helper()
	want := make(map[string]string, len(f.agents))
	for _, a := range f.agents {
		got := a.received()
		last := got[len(got)-1].assignment
		if err := a.stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Ack{Ack: &droverv1.AssignmentAck{
			Version: last.GetVersion(), Nonce: last.GetNonce(),
		}}}); err != nil {
			b.Fatalf("agent %s: ack: %v", a.name, err)
		}
		want[a.name] = last.GetVersion()
	}
	deadline := time.Now().Add(fanoutPatience)
	for {
		pending := f.unacked(b, want)
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d ACKs not recorded after %v", pending, len(want), fanoutPatience)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// unacked counts the clusters of want whose recorded ACK is not the
// version want holds for them.
func (f *fanout) unacked(b *testing.B, want map[string]string) int {
	b.Helper()
	pending := len(want)
	for page := ""; ; {
		var resp droverv1.ListClustersResponse
		fanoutCall(b, f.h, "GET", "/api/v1/clusters?page_size=1000&page_token="+url.QueryEscape(page), nil, &resp)
		for _, c := range resp.GetClusters() {
			if v, ok := want[c.GetName()]; ok && v == c.GetAckedVersion() {
				pending--
			}
		}
		if page = resp.GetNextPageToken(); page == "" {
			return pending
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
