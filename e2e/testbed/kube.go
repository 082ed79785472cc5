package testbed

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

// NeverReadyLabel, on a pod (or a pod template), keeps the pod from ever
// becoming Ready: kwok schedules it and leaves it Pending. Failure tests use
// it to make workloads that never turn healthy.
const NeverReadyLabel = "drover.test/never-ready"

const (
	// kubeToolchain names the directory, under the cache, of one build of
	// the binaries; e2e/testbed/kubebuild/build.sh makes it.
	kubeToolchain = "k8s-v1.37.2-etcd-v3.7.3-kwok-v0.8.0"
	// kubeStagesFile is kwok's stages, beside bin/ in that directory.
	kubeStagesFile = "kwok-stages.yaml"

	defaultNodePods = 250
	// kwokNodeName is the one fake node of every cluster.
	kwokNodeName = "kwok-node-0"

	// startTimeout bounds starting all clusters of one call; a loaded
	// 2-core machine needs a fraction of it.
	startTimeout = 2 * time.Minute
	// bindAttempts is how often a start is tried with new ports when a port
	// chosen free was taken before the child could bind it.
	bindAttempts = 5
)

// kubeBinaries are the programs the test bed runs, in bin/ of its directory.
var kubeBinaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

// Options configures ClustersWithOptions.
type Options struct {
	// N is how many clusters to start. It may be left 0 when Names is set.
	N int
	// Names are the clusters' names: unique DNS labels. By default they
	// are "testbed-<random>-1" to "testbed-<random>-N", unique per call.
	Names []string
	// NodePods is the pod capacity of each cluster's fake node; 0 means 250.
	NodePods int
}

// Cluster is one local Kubernetes cluster: its own kube-apiserver (on its
// own prefix of the shared etcd), kube-controller-manager, kube-scheduler,
// and kwok faking one node whose pods become Ready.
type Cluster struct {
	// Name is the cluster's name, unique per Clusters call; tests use it as
	// the cluster's name in Drover.
	Name string
	// Kubeconfig is the path of a kubeconfig file with cluster-admin
	// (system:masters) credentials.
	Kubeconfig string
	// Config is the same access for client-go. Copy it (rest.CopyConfig)
	// before changing it.
	Config *rest.Config

	bed   *kubeBed
	index int    // 1-based position in its Clusters call
	dir   string // the cluster's files: PKI, kubeconfig, logs
	pki   *clusterPKI
	port  int          // kube-apiserver's secure port, kept across restarts
	http  *http.Client // for /readyz, with the admin credentials

	mu                sync.Mutex // guards the fields below and serialises Stop/StartAPIServer
	apiserver         *Process
	controllerManager *Process
	scheduler         *Process
	kwok              *Process
}

// kubeBed is what one Clusters call started, and what its cleanup stops.
type kubeBed struct {
	t        testing.TB
	binDir   string
	dir      string
	stages   string // path of the kwok stages all clusters use
	clusters []*Cluster
	freePort func() (int, error) // freePort, but a test can hand out a taken port

	mu      sync.Mutex // guards the fields below
	etcd    *Process
	etcdURL string
	stopped bool // cleanup has begun: children's exits are no longer reported
}

// Clusters starts n Kubernetes clusters in parallel and returns them once
// each serves its API, has a Ready node and a default ServiceAccount, so
// pods can be created. They are stopped when the test ends. A part that
// exits while the test runs fails the test with the end of its log.
func Clusters(t testing.TB, n int) []*Cluster {
	t.Helper()
	return ClustersWithOptions(t, Options{N: n})
}

// ClustersWithOptions is Clusters with options.
func ClustersWithOptions(t testing.TB, opts Options) []*Cluster {
	t.Helper()
	names, err := opts.clusterNames()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	nodePods := opts.NodePods
	if nodePods == 0 {
		nodePods = defaultNodePods
	}
	root, err := kubeTestbedDir()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	if err := checkKubeBinaries(root); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "drover-kube-")
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}

	b := &kubeBed{t: t, binDir: filepath.Join(root, "bin"), dir: dir, freePort: freePort}
	t.Cleanup(b.cleanup)
	started := time.Now()
	if err := b.start(t.Context(), root, names, nodePods); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	t.Logf("testbed: %d Kubernetes clusters (%s) ready in %s; files in %s",
		len(names), strings.Join(names, ", "), since(started), dir)
	return b.clusters
}

// clusterNames validates the options and returns the clusters' names.
func (o Options) clusterNames() ([]string, error) {
	if o.NodePods < 0 {
		return nil, fmt.Errorf("options: NodePods is %d: give a positive pod capacity, or 0 for %d", o.NodePods, defaultNodePods)
	}
	if len(o.Names) == 0 {
		if o.N < 1 {
			return nil, fmt.Errorf("options: N is %d: start at least one cluster", o.N)
		}
		suffix := randomHex(3)
		names := make([]string, o.N)
		for i := range names {
			names[i] = fmt.Sprintf("testbed-%s-%d", suffix, i+1)
		}
		return names, nil
	}
	if o.N != 0 && o.N != len(o.Names) {
		return nil, fmt.Errorf("options: N is %d but %d Names are given: leave N 0", o.N, len(o.Names))
	}
	seen := map[string]bool{}
	for _, name := range o.Names {
		if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
			return nil, fmt.Errorf("cluster name %q: %s", name, strings.Join(errs, "; "))
		}
		if seen[name] {
			return nil, fmt.Errorf("cluster name %q is given twice", name)
		}
		seen[name] = true
	}
	return o.Names, nil
}

// kubeTestbedDir is where the binaries are: $DROVER_TESTBED_DIR, or the
// versioned directory in the user's cache where `make testbed` builds them.
func kubeTestbedDir() (string, error) {
	if dir := os.Getenv("DROVER_TESTBED_DIR"); dir != "" {
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the test bed's binaries: %w; set DROVER_TESTBED_DIR", err)
	}
	return filepath.Join(cache, "drover-testbed", kubeToolchain), nil
}

// checkKubeBinaries returns an error naming what is missing from dir and
// how to get it, or nil.
func checkKubeBinaries(dir string) error {
	var missing []string
	for _, name := range kubeBinaries {
		info, err := os.Stat(filepath.Join(dir, "bin", name))
		if err != nil || !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
			missing = append(missing, "bin/"+name)
		}
	}
	if info, err := os.Stat(filepath.Join(dir, kubeStagesFile)); err != nil || info.Size() == 0 {
		missing = append(missing, kubeStagesFile)
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("testbed: the local Kubernetes binaries are missing (%s in %s): "+
		"run `make testbed` (builds them from the Go module proxy, ~6 min once)",
		strings.Join(missing, ", "), dir)
}

// start starts etcd and the clusters, setting b.clusters. Whatever it
// started is in b, for cleanup, also when it fails.
func (b *kubeBed) start(ctx context.Context, root string, names []string, nodePods int) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	stages, err := os.ReadFile(filepath.Join(root, kubeStagesFile))
	if err != nil {
		return fmt.Errorf("read kwok stages: %w", err)
	}
	if stages, err = withNeverReadyStage(stages); err != nil {
		return fmt.Errorf("kwok stages in %s: %w", root, err)
	}
	b.stages = filepath.Join(b.dir, kubeStagesFile)
	if err := os.WriteFile(b.stages, stages, 0o644); err != nil {
		return fmt.Errorf("write kwok stages: %w", err)
	}

	for i, name := range names {
		b.clusters = append(b.clusters, &Cluster{
			Name:  name,
			bed:   b,
			index: i + 1,
			dir:   filepath.Join(b.dir, name),
		})
	}

	g, ctx := errgroup.WithContext(ctx)
	etcdUp := make(chan struct{})
	g.Go(func() error {
		if err := b.startEtcd(ctx); err != nil {
			return err
		}
		close(etcdUp)
		return nil
	})
	for _, c := range b.clusters {
		g.Go(func() error {
			if err := c.prepare(); err != nil {
				return err
			}
			select {
			case <-etcdUp:
			case <-ctx.Done():
				return ctx.Err()
			}
			return c.start(ctx, nodePods)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}

	// Only now that all are up does an exit mean a crash: during the start
	// a bind collision ends an attempt, and the error says what failed.
	b.mu.Lock()
	etcd := b.etcd
	b.mu.Unlock()
	b.watch(etcd)
	for _, c := range b.clusters {
		for _, p := range c.processes() {
			b.watch(p)
		}
	}
	return nil
}

// startEtcd starts the etcd the clusters share, with new ports and a new
// data directory for each attempt.
func (b *kubeBed) startEtcd(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		clientPort, err := b.freePort()
		if err != nil {
			return fmt.Errorf("start etcd: %w", err)
		}
		peerPort, err := b.freePort()
		if err != nil {
			return fmt.Errorf("start etcd: %w", err)
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
		args := []string{
			"--name", "testbed",
			"--data-dir", filepath.Join(b.dir, "etcd-data-"+strconv.Itoa(attempt)),
			"--listen-client-urls", clientURL,
			"--advertise-client-urls", clientURL,
			"--listen-peer-urls", peerURL,
			"--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "testbed=" + peerURL,
			"--unsafe-no-fsync",
			"--quota-backend-bytes", strconv.Itoa(512 << 20),
			"--log-level", "warn",
		}
		p, err := StartProcess("etcd", filepath.Join(b.binDir, "etcd"), args, nil, b.dir, filepath.Join(b.dir, "etcd.log"))
		if err != nil {
			return err
		}
		b.mu.Lock()
		b.etcd, b.etcdURL = p, clientURL
		b.mu.Unlock()

		err = waitUntil(ctx, "etcd", []*Process{p}, func(ctx context.Context) (bool, error) {
			return httpOK(ctx, http.DefaultClient, clientURL+"/health")
		})
		if err == nil {
			return nil
		}
		if !p.bindFailed() || attempt == bindAttempts {
			return fmt.Errorf("start etcd: %w", err)
		}
	}
}

// watch reports p's exit as a test failure unless the test bed stopped it.
func (b *kubeBed) watch(p *Process) {
	go func() {
		<-p.done
		if p.stopping.Load() {
			return
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.stopped { // the test may have ended: Errorf would panic
			return
		}
		b.t.Errorf("testbed: %v", p.ExitError())
	}()
}

// cleanup stops everything in the reverse order of the start, one layer
// at a time across clusters: an apiserver left without its etcd hangs
// for a long time before it exits.
func (b *kubeBed) cleanup() {
	b.mu.Lock()
	b.stopped = true
	etcd := b.etcd
	b.mu.Unlock()

	var kwoks, schedulers, controllerManagers, apiservers []*Process
	for _, c := range b.clusters {
		c.mu.Lock()
		kwoks = append(kwoks, c.kwok)
		schedulers = append(schedulers, c.scheduler)
		controllerManagers = append(controllerManagers, c.controllerManager)
		apiservers = append(apiservers, c.apiserver)
		c.mu.Unlock()
	}
	for _, layer := range [][]*Process{kwoks, schedulers, controllerManagers, apiservers, {etcd}} {
		stopAll(layer)
	}

	if b.t.Failed() {
		// Keep the logs to read; the etcd data is of no use and large.
		matches, _ := filepath.Glob(filepath.Join(b.dir, "etcd-data-*"))
		for _, m := range matches {
			_ = os.RemoveAll(m)
		}
		b.t.Logf("testbed: the test failed; the clusters' logs are kept in %s", b.dir)
		return
	}
	if err := os.RemoveAll(b.dir); err != nil {
		b.t.Errorf("testbed: remove %s: %v", b.dir, err)
	}
}

// prepare makes the cluster's directory and PKI.
func (c *Cluster) prepare() error {
	if err := os.MkdirAll(filepath.Join(c.dir, "apiserver-certs"), 0o755); err != nil {
		return fmt.Errorf("prepare cluster %s: %w", c.Name, err)
	}
	pki, err := newClusterPKI(c.Name)
	if err != nil {
		return fmt.Errorf("prepare cluster %s: %w", c.Name, err)
	}
	if err := pki.write(c.dir); err != nil {
		return fmt.Errorf("prepare cluster %s: %w", c.Name, err)
	}
	c.pki = pki
	c.Kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	return nil
}

// start starts the cluster's control plane and kwok, registers the fake
// node and waits until pods can be created and run.
func (c *Cluster) start(ctx context.Context, nodePods int) error {
	started := time.Now()
	if err := c.startFirstAPIServer(ctx); err != nil {
		return err
	}
	apiReady := since(started)
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("client for cluster %s: %w", c.Name, err)
	}

	cm, err := c.run("kube-controller-manager",
		"--kubeconfig", c.Kubeconfig,
		"--leader-elect=false",
		"--bind-address", "127.0.0.1",
		"--secure-port", "0",
		"--root-ca-file", filepath.Join(c.dir, caCertFile),
		"--service-account-private-key-file", filepath.Join(c.dir, saKeyFile),
		"--cluster-signing-cert-file", filepath.Join(c.dir, caCertFile),
		"--cluster-signing-key-file", filepath.Join(c.dir, caKeyFile),
		"--use-service-account-credentials=false",
		// A loopback API: client-side throttling would only slow tests
		// that create many objects.
		"--kube-api-qps", "200",
		"--kube-api-burst", "400",
	)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.controllerManager = cm
	c.mu.Unlock()

	sched, err := c.run("kube-scheduler",
		"--kubeconfig", c.Kubeconfig,
		"--leader-elect=false",
		"--bind-address", "127.0.0.1",
		"--secure-port", "0",
	)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.scheduler = sched
	c.mu.Unlock()

	kwok, err := c.run("kwok",
		"--config", c.bed.stages,
		"--kubeconfig", c.Kubeconfig,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
		"--node-lease-duration-seconds", "40",
		"--cidr", fmt.Sprintf("10.244.%d.0/24", c.index%256),
		"--node-ip", fmt.Sprintf("10.1.%d.1", c.index%256),
	)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.kwok = kwok
	c.mu.Unlock()

	if err := createFakeNode(ctx, client, nodePods); err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	err = waitUntil(ctx, "node "+kwokNodeName+" Ready in cluster "+c.Name, []*Process{kwok, sched}, func(ctx context.Context) (bool, error) {
		node, err := client.CoreV1().Nodes().Get(ctx, kwokNodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	nodeReady := since(started)
	// The ServiceAccount admission plugin rejects pods until the
	// controller-manager made the namespace's default ServiceAccount.
	err = waitUntil(ctx, "ServiceAccount default/default in cluster "+c.Name, []*Process{cm}, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		return err
	}
	c.bed.t.Logf("testbed: cluster %s at %s: API ready after %s, node Ready after %s, ServiceAccount after %s",
		c.Name, c.Config.Host, apiReady, nodeReady, since(started))
	return nil
}

// run starts one of the cluster's binaries, logging to NAME.log in its
// directory.
func (c *Cluster) run(binary string, args ...string) (*Process, error) {
	var env []string
	if binary == "kwok" {
		// kwok also reads ~/.kwok/kwok.yaml when there is one; a HOME of
		// its own keeps a developer's kwok settings out of the tests.
		env = append(os.Environ(), "HOME="+c.dir)
	}
	return StartProcess(binary+" "+c.Name, filepath.Join(c.bed.binDir, binary), args, env, c.dir,
		filepath.Join(c.dir, binary+".log"))
}

// startFirstAPIServer picks the apiserver's port, writes the kubeconfig for
// it and starts the apiserver, with new ports while they turn out taken.
func (c *Cluster) startFirstAPIServer(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		port, err := c.bed.freePort()
		if err != nil {
			return fmt.Errorf("start kube-apiserver %s: %w", c.Name, err)
		}
		if err := c.setPort(port); err != nil {
			return err
		}
		c.mu.Lock()
		p, err := c.startAPIServerLocked(ctx)
		c.mu.Unlock()
		if err == nil {
			return nil
		}
		if p == nil || !p.bindFailed() || attempt == bindAttempts {
			return err
		}
	}
}

// setPort points the cluster's kubeconfig and clients at an apiserver on port.
func (c *Cluster) setPort(port int) error {
	c.port = port
	server := "https://127.0.0.1:" + strconv.Itoa(port)
	if err := c.pki.writeKubeconfig(c.Kubeconfig, c.Name, server); err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("cluster %s: load kubeconfig: %w", c.Name, err)
	}
	// A loopback API: client-side throttling would only slow the tests.
	cfg.QPS, cfg.Burst = 200, 400
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("cluster %s: HTTP client: %w", c.Name, err)
	}
	c.Config, c.http = cfg, httpClient
	return nil
}

// startAPIServerLocked starts kube-apiserver on c.port and waits for
// /readyz. It returns the process also on failure, or nil if it did not
// start.
func (c *Cluster) startAPIServerLocked(ctx context.Context) (*Process, error) {
	c.bed.mu.Lock()
	etcdURL := c.bed.etcdURL
	c.bed.mu.Unlock()
	p, err := c.run("kube-apiserver",
		"--etcd-servers", etcdURL,
		"--etcd-prefix", "/registry-"+c.Name,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(c.port),
		"--cert-dir", filepath.Join(c.dir, "apiserver-certs"),
		"--tls-cert-file", filepath.Join(c.dir, serverCertFile),
		"--tls-private-key-file", filepath.Join(c.dir, serverKeyFile),
		"--client-ca-file", filepath.Join(c.dir, caCertFile),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(c.dir, saPubFile),
		"--service-account-signing-key-file", filepath.Join(c.dir, saKeyFile),
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--authorization-mode", "RBAC",
		"--allow-privileged=true",
		"--endpoint-reconciler-type", "none",
		// Otherwise a stop waits up to --request-timeout (60 s) for open
		// watches; this way it drains the other requests, then gives
		// connections 2 s.
		"--shutdown-send-retry-after=true",
	)
	if err != nil {
		return nil, err
	}
	c.apiserver = p
	err = waitUntil(ctx, "kube-apiserver "+c.Name+" /readyz", []*Process{p}, func(ctx context.Context) (bool, error) {
		return httpOK(ctx, c.http, c.Config.Host+"/readyz")
	})
	if err != nil {
		return p, fmt.Errorf("start kube-apiserver %s on port %d: %w", c.Name, c.port, err)
	}
	return p, nil
}

// Client returns a clientset for the cluster with admin rights.
func (c *Cluster) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatalf("testbed: client for cluster %s: %v", c.Name, err)
	}
	return client
}

// StopAPIServer stops the cluster's kube-apiserver, leaving the rest of the
// cluster running, to test what clients do while their API is gone.
func (c *Cluster) StopAPIServer(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiserver == nil || c.apiserver.Exited() {
		t.Fatalf("testbed: StopAPIServer: the kube-apiserver of cluster %s is not running", c.Name)
	}
	started := time.Now()
	c.apiserver.Stop(stopGrace)
	t.Logf("testbed: stopped the kube-apiserver of cluster %s in %s", c.Name, since(started))
}

// StartAPIServer starts the cluster's kube-apiserver again after
// StopAPIServer, on the same port with the same certificates, so clients
// made before reconnect. It returns once the API is ready.
func (c *Cluster) StartAPIServer(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiserver != nil && !c.apiserver.Exited() {
		t.Fatalf("testbed: StartAPIServer: the kube-apiserver of cluster %s is running; call StopAPIServer first", c.Name)
	}
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	started := time.Now()
	p, err := c.startAPIServerLocked(ctx)
	if err != nil {
		if p != nil && p.bindFailed() {
			t.Fatalf("testbed: %v\n(something else took port %d while the apiserver was stopped)", err, c.port)
		}
		t.Fatalf("testbed: %v", err)
	}
	c.bed.watch(p)
	t.Logf("testbed: restarted the kube-apiserver of cluster %s in %s", c.Name, since(started))
}

// processes returns the cluster's children in the order they started.
func (c *Cluster) processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	var procs []*Process
	for _, p := range []*Process{c.apiserver, c.controllerManager, c.scheduler, c.kwok} {
		if p != nil {
			procs = append(procs, p)
		}
	}
	return procs
}

// createFakeNode registers the node kwok plays: no taints, and room for
// nodePods pods.
func createFakeNode(ctx context.Context, client kubernetes.Interface, nodePods int) error {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   *resource.NewQuantity(int64(nodePods), resource.DecimalSI),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        kwokNodeName,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				"kubernetes.io/hostname": kwokNodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "kwok",
			},
		},
		Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
	_, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", kwokNodeName, err)
	}
	return nil
}

// withNeverReadyStage returns kwok's stages with the pod-ready stage
// changed to pass over pods labelled NeverReadyLabel.
func withNeverReadyStage(stages []byte) ([]byte, error) {
	expr := map[string]any{
		"key":      fmt.Sprintf(".metadata.labels[%q]", NeverReadyLabel),
		"operator": "DoesNotExist",
	}
	var out bytes.Buffer
	found := false
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stages)))
	for {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("split stages: %w", err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return nil, fmt.Errorf("parse stage: %w", err)
		}
		if obj == nil { // an empty document, or only comments
			continue
		}
		u := unstructured.Unstructured{Object: obj}
		if u.GetKind() == "Stage" && u.GetName() == "pod-ready" {
			exprs, _, err := unstructured.NestedSlice(obj, "spec", "selector", "matchExpressions")
			if err != nil {
				return nil, fmt.Errorf("stage pod-ready: %w", err)
			}
			if !slices.ContainsFunc(exprs, func(e any) bool { return reflect.DeepEqual(e, expr) }) {
				exprs = append(exprs, expr)
			}
			if err := unstructured.SetNestedSlice(obj, exprs, "spec", "selector", "matchExpressions"); err != nil {
				return nil, fmt.Errorf("stage pod-ready: %w", err)
			}
			found = true
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("encode stage %s: %w", u.GetName(), err)
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	if !found {
		return nil, errors.New("no Stage named pod-ready")
	}
	return out.Bytes(), nil
}

// freePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before the child binds it; callers retry then.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// httpOK reports whether GET url answers 200 OK.
func httpOK(ctx context.Context, client *http.Client, url string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return true, nil
}
