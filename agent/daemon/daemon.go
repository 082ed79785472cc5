// Package daemon wires drover-agent together: the state directory, the
// hub session, the reconciler and the cluster's Kubernetes client.
// drover-agent's main only parses flags and calls Run; tests start agents
// in-process with Start.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path"
	"path/filepath"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/drover-dev/drover/agent/apply"
	"github.com/drover-dev/drover/agent/hubclient"
	"github.com/drover-dev/drover/agent/reconcile"
	"github.com/drover-dev/drover/agent/render"
	"github.com/drover-dev/drover/agent/source"
	"github.com/drover-dev/drover/agent/state"
	"github.com/drover-dev/drover/agent/watch"
	"github.com/drover-dev/drover/internal/version"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Agent is a running agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	kube  kubernetes.Interface
	rec   *reconcile.Reconciler
	hub   *hubclient.Client
	watch *watch.Watcher
	state *state.Dir

	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Run runs an agent until ctx ends.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	a, err := Start(ctx, cfg, logger)
	if err != nil {
		return err
	}
	<-a.done
	return a.err
}

// Start registers (on first start), resumes the stored assignment and
// starts reconciling and the hub session. Registration needs the hub; after
// it, the agent works with or without the hub.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	st, err := state.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	restCfg, err := kubeConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	restCfg.QPS, restCfg.Burst = float32(cfg.KubeAPIQPS), cfg.KubeAPIBurst
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	applier, err := apply.New(restCfg, logger, apply.Options{HookTimeout: cfg.HookTimeout})
	if err != nil {
		return nil, fmt.Errorf("apply engine: %w", err)
	}
	meta, err := metadata.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes metadata client: %w", err)
	}
	cache, err := source.NewCache(filepath.Join(cfg.StateDir, "git"), cfg.CacheMaxBytes, logger)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: logger, kube: kube, state: st, done: make(chan struct{})}

	var caPEM []byte
	if cfg.HubCAFile != "" {
		if caPEM, err = hubclient.ReadCA(cfg.HubCAFile); err != nil {
			return nil, err
		}
	}
	hubAddrs, err := hubclient.ParseAddrs(cfg.HubAddr)
	if err != nil {
		return nil, fmt.Errorf("--hub: %w", err) // Validate let it pass
	}
	a.hub = hubclient.New(hubclient.Config{
		HubAddrs: hubAddrs, ServerName: cfg.HubServerName, HubCA: caPEM,
		JoinToken: cfg.JoinToken, ClusterName: cfg.ClusterName,
		Heartbeat: cfg.Heartbeat, BackoffMax: cfg.BackoffMax,
	}, st, a, logger)
	caps, err := newCapabilities(restCfg, capabilitiesMaxAge)
	if err != nil {
		return nil, err
	}
	renderer := func(ctx context.Context, root string, aa *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
		o := render.Options{
			IsNamespaced: applier.IsNamespaced,
			MaxFileBytes: cfg.MaxManifestBytes, MaxBytes: cfg.MaxRenderBytes, MaxObjects: cfg.MaxRenderObjects,
		}
		if aa.GetRender() == droverv1.RenderType_RENDER_TYPE_HELM {
			// Only Helm asks: other renders never pay for discovery.
			kubeVersion, apiVersions, err := caps.get()
			if err != nil {
				return nil, err
			}
			o.KubeVersion, o.APIVersions = kubeVersion, apiVersions
		}
		return o.Render(ctx, root, aa)
	}
	// The watches heal drift within seconds; the reconciler's interval
	// stays as a backstop for what they miss.
	a.watch = watch.New(watch.Config{}, meta, applier,
		func(app string) bool { return a.rec.Holds(app) },
		func(app string) { a.rec.Drifted(app) }, logger)
	a.rec = reconcile.New(reconcile.Config{Concurrency: cfg.Concurrency, DefaultInterval: cfg.SyncInterval, Reconciled: a.watchApplied},
		st, cache, renderer, reconcile.Engine(applier),
		func(version, nonce string) { a.hub.Ack(version, nonce, nil) }, a.hub.StatusChanged, logger)

	if err := a.hub.Register(ctx); err != nil {
		return nil, err
	}
	if err := a.rec.Resume(); err != nil {
		// A damaged stored assignment is replaced by the hub's next one.
		logger.Warn("stored assignment not resumed", "err", err)
	}
	var metrics *http.Server
	if cfg.MetricsAddr != "" {
		lis, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return nil, fmt.Errorf("listen on --metrics-addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", newAgentMetrics(a.hub.Connected, a.rec.AppliedVersion, a.rec.Statuses, a.watch.Syncs).handler(logger))
		metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metrics.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				logger.Error("metrics listener failed", "err", err)
			}
		}()
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	go func() {
		defer close(a.done)
		recDone := make(chan struct{})
		go func() { a.rec.Run(runCtx); close(recDone) }()
		a.err = a.hub.Run(runCtx)
		cancel()
		<-recDone
		a.watch.Close()
		if metrics != nil {
			metrics.Close()
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			cancel()
		case <-a.done:
		}
	}()
	logger.Info("agent started", "version", version.Version, "hub", cfg.HubAddr, "state", cfg.StateDir)
	return a, nil
}

// Stop stops the agent and waits for it.
func (a *Agent) Stop() error {
	a.cancel()
	<-a.done
	return a.err
}

// AppliedVersion is the last assignment version the agent applied.
func (a *Agent) AppliedVersion() string { return a.rec.AppliedVersion() }

// Hub is the address of the hub replica the agent's session is with, or
// "" while it has none.
func (a *Agent) Hub() string { return a.hub.Hub() }

// HubAttempts counts the registrations and sessions the agent tried.
func (a *Agent) HubAttempts() int64 { return a.hub.Attempts() }

// AssignmentsReceived counts the assignments hubs sent the agent.
func (a *Agent) AssignmentsReceived() int64 { return a.hub.AssignmentsReceived() }

// Assignment implements hubclient.Handler.
func (a *Agent) Assignment(ctx context.Context, asg *droverv1.Assignment) error {
	if err := a.rec.SetAssignment(ctx, asg); err != nil {
		return err
	}
	// Applications that left stop being watched at once; their objects
	// are pruned or left, as their policy says, and are no drift.
	a.watch.Prune()
	return nil
}

// watchApplied watches the objects an application's reconcile listed.
// A reconcile that failed before it knew them (fetch, render) changes
// nothing: the objects applied before are still there to watch.
func (a *Agent) watchApplied(app string, res *apply.Result, err error) {
	if err != nil && len(res.Resources) == 0 {
		return
	}
	a.watch.Hold(app, res.Objects())
}

// Command implements hubclient.Handler.
func (a *Agent) Command(_ context.Context, c *droverv1.Command) {
	switch c.GetType() {
	case droverv1.CommandType_COMMAND_TYPE_SYNC_NOW:
		a.rec.SyncNow(c.GetApplication())
	case droverv1.CommandType_COMMAND_TYPE_RESYNC_STATUS:
		a.rec.RequestFullStatus()
		a.hub.StatusChanged()
	default:
		a.log.Warn("unknown command from the hub; ignored", "type", c.GetType())
	}
}

// Facts implements hubclient.Handler: what the hub shows about the
// cluster. An unreachable API server leaves them empty.
func (a *Agent) Facts(ctx context.Context) *droverv1.ClusterFacts {
	f := &droverv1.ClusterFacts{AgentVersion: version.Version}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if v, err := a.kube.Discovery().ServerVersion(); err == nil {
		f.KubernetesVersion = v.GitVersion
	}
	if nodes, err := a.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		f.NodeCount = int32(len(nodes.Items))
	}
	return f
}

// SessionStarted implements hubclient.Handler.
func (a *Agent) SessionStarted() { a.rec.ResendStatuses() }

// PendingStatus implements hubclient.Handler.
func (a *Agent) PendingStatus(full bool) *droverv1.StatusReport { return a.rec.PendingStatus(full) }

// StatusSent implements hubclient.Handler.
func (a *Agent) StatusSent(r *droverv1.StatusReport) { a.rec.StatusSent(r) }

var _ hubclient.Handler = (*Agent)(nil)

// capabilitiesMaxAge is how long the cluster's API versions are reused
// for Helm's .Capabilities: a CRD installed by one application shows in
// another's render within it, and a fleet of renders costs one discovery
// a minute at most.
const capabilitiesMaxAge = time.Minute

// capabilities caches what the cluster serves, for Helm charts'
// .Capabilities. Safe for concurrent use.
type capabilities struct {
	disc   discovery.DiscoveryInterface
	maxAge time.Duration

	mu          sync.Mutex // guards the fields below
	at          time.Time  // of the last discovery; zero before
	kubeVersion string
	apiVersions []string
}

func newCapabilities(restCfg *rest.Config, maxAge time.Duration) (*capabilities, error) {
	c := rest.CopyConfig(restCfg)
	if c.Timeout == 0 {
		// A render waits for it: an API server that does not answer
		// must fail the render, to be retried, not hold it.
		c.Timeout = 30 * time.Second
	}
	disc, err := discovery.NewDiscoveryClientForConfig(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes discovery client: %w", err)
	}
	return &capabilities{disc: disc, maxAge: maxAge}, nil
}

// get returns the cluster's Kubernetes version and its API versions as
// Helm lists them: "group/version" and "group/version/Kind". An error
// (the API server down) is transient: the render is retried.
func (c *capabilities) get() (string, []string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < c.maxAge {
		return c.kubeVersion, c.apiVersions, nil
	}
	v, err := c.disc.ServerVersion()
	if err != nil {
		return "", nil, fmt.Errorf("cluster capabilities for Helm: %w", err)
	}
	groups, resources, err := c.disc.ServerGroupsAndResources()
	// As Helm does: an aggregated API that is down leaves its versions
	// out, and the rest stands.
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		return "", nil, fmt.Errorf("cluster capabilities for Helm: %w", err)
	}
	seen := make(map[string]bool)
	for _, g := range groups {
		for _, gv := range g.Versions {
			seen[gv.GroupVersion] = true
		}
	}
	for _, rl := range resources {
		for _, r := range rl.APIResources {
			seen[path.Join(rl.GroupVersion, r.Kind)] = true
		}
	}
	versions := make([]string, 0, len(seen))
	for gv := range seen {
		versions = append(versions, gv)
	}
	slices.Sort(versions)
	c.at, c.kubeVersion, c.apiVersions = time.Now(), v.GitVersion, versions
	return c.kubeVersion, c.apiVersions, nil
}

func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes config: %w (outside a cluster, pass --kubeconfig)", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return c, nil
}
