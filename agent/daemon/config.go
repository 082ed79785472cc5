package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/drover-dev/drover/agent/apply"
	"github.com/drover-dev/drover/agent/hubclient"
	"github.com/drover-dev/drover/agent/render"
	"github.com/drover-dev/drover/internal/envflag"
)

// Config is drover-agent's configuration. Every field has a flag and a
// DROVER_... environment variable; flags win.
type Config struct {
	// HubAddr is the agent endpoint of the hub, HOST:PORT, or of each of
	// its replicas, separated by commas (see hubclient.ParseAddrs).
	HubAddr string
	// HubCAFile is the PEM CA of the hub, needed for the first start.
	HubCAFile string
	// HubServerName overrides the name checked in the certificate of
	// every hub replica; empty means the host of each address.
	HubServerName string
	// JoinToken and ClusterName register the agent on its first start.
	JoinToken   string
	ClusterName string
	// StateDir keeps the agent's identity, last assignment and Git cache.
	StateDir string
	// Kubeconfig is the cluster to manage; empty means in-cluster.
	Kubeconfig string
	// Concurrency is how many applications are reconciled at once.
	Concurrency int
	// SyncInterval is how often an application whose sync policy names
	// no interval is synced again. Drift is healed within seconds by the
	// watches on what the agent applied; the interval is their backstop.
	SyncInterval time.Duration
	// KubeAPIQPS and KubeAPIBurst are the client-side rate limits of the
	// agent's requests to its cluster's API server: a sustained rate per
	// second and the burst above it.
	KubeAPIQPS   float64
	KubeAPIBurst int
	// CacheMaxBytes bounds the Git cache.
	CacheMaxBytes int64
	// MaxManifestBytes bounds each file a render reads, MaxRenderBytes
	// an application's manifests (and its rendered objects), and
	// MaxRenderObjects its objects: a render holds them all in memory at
	// once, so with Concurrency they bound the agent's memory.
	MaxManifestBytes int64
	MaxRenderBytes   int64
	MaxRenderObjects int
	// Heartbeat is how often the agent tells the hub it is alive.
	Heartbeat time.Duration
	// BackoffMax caps the delay between reconnects to the hub.
	BackoffMax time.Duration
	// LogLevel is the least level logged: debug, info, warn or error.
	LogLevel slog.Level
	// MetricsAddr, when set, serves Prometheus metrics on /metrics there.
	MetricsAddr string
	// HookTimeout bounds each Helm hook's run, and the wait for an
	// application's objects to be healthy before its post hooks.
	HookTimeout time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		StateDir:      "/var/lib/drover-agent",
		Concurrency:   4,
		SyncInterval:  5 * time.Minute,
		KubeAPIQPS:    apply.DefaultQPS,
		KubeAPIBurst:  apply.DefaultBurst,
		CacheMaxBytes: 1 << 30,
		Heartbeat:     30 * time.Second,
		BackoffMax:    30 * time.Second,
		LogLevel:      slog.LevelInfo,

		MaxManifestBytes: render.DefaultMaxFileBytes,
		MaxRenderBytes:   render.DefaultMaxBytes,
		MaxRenderObjects: render.DefaultMaxObjects,
		HookTimeout:      apply.DefaultHookTimeout,
	}
}

// RegisterFlags binds c's fields to flags on fs, each with its DROVER_...
// environment variable.
func (c *Config) RegisterFlags(fs *envflag.FlagSet) {
	fs.String(&c.HubAddr, "hub", "DROVER_HUB", "the hub's agent endpoint, HOST:PORT; for several hub replicas, their endpoints separated by commas (a name may also resolve to several addresses)")
	fs.String(&c.HubCAFile, "hub-ca", "DROVER_HUB_CA", "PEM file with the hub's CA certificate (first start)")
	fs.String(&c.HubServerName, "hub-server-name", "DROVER_HUB_SERVER_NAME", "name to verify in the hub's certificate (default: the host of each --hub address)")
	fs.String(&c.JoinToken, "join-token", "DROVER_JOIN_TOKEN", "join token for the first start (droverctl token create)")
	fs.String(&c.ClusterName, "cluster-name", "DROVER_CLUSTER_NAME", "name to register this cluster under (first start)")
	fs.String(&c.StateDir, "state-dir", "DROVER_STATE_DIR", "directory for the agent's identity, last assignment and Git cache")
	fs.String(&c.Kubeconfig, "kubeconfig", "DROVER_KUBECONFIG", "kubeconfig of the cluster to manage; empty means in-cluster")
	fs.LogLevel(&c.LogLevel, "log-level", "DROVER_LOG_LEVEL")
	fs.String(&c.MetricsAddr, "metrics-addr", "DROVER_METRICS_ADDR", "listen address for Prometheus metrics on /metrics, such as :9090; off when empty")
	fs.Int(&c.Concurrency, "concurrency", "DROVER_CONCURRENCY", "applications reconciled at once")
	fs.Duration(&c.SyncInterval, "sync-interval", "DROVER_SYNC_INTERVAL", "how often an application is synced again when its syncPolicy.interval is empty; drift is healed within seconds regardless, by watches on what the agent applied")
	fs.Float64(&c.KubeAPIQPS, "kube-api-qps", "DROVER_KUBE_API_QPS", "requests per second the agent sends its cluster's API server, sustained")
	fs.Int(&c.KubeAPIBurst, "kube-api-burst", "DROVER_KUBE_API_BURST", "requests the agent may send its cluster's API server at once above --kube-api-qps")
	fs.Int64(&c.CacheMaxBytes, "cache-max-bytes", "DROVER_CACHE_MAX_BYTES", "size bound of the Git cache")
	fs.Int64(&c.MaxManifestBytes, "max-manifest-bytes", "DROVER_MAX_MANIFEST_BYTES", "largest manifest file a render reads; a larger one fails its application")
	fs.Int64(&c.MaxRenderBytes, "max-render-bytes", "DROVER_MAX_RENDER_BYTES", "most manifest bytes one application's render reads, and most bytes of objects it makes")
	fs.Int(&c.MaxRenderObjects, "max-render-objects", "DROVER_MAX_RENDER_OBJECTS", "most objects one application renders")
	fs.Duration(&c.Heartbeat, "heartbeat", "DROVER_HEARTBEAT", "heartbeat interval")
	fs.Duration(&c.BackoffMax, "backoff-max", "DROVER_BACKOFF_MAX", "longest wait between reconnects")
	fs.Duration(&c.HookTimeout, "hook-timeout", "DROVER_HOOK_TIMEOUT", "how long a Helm hook may run, and an application's objects take to become healthy before its post hooks")
}

// Validate reports every problem, each saying how to fix it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, err := hubclient.ParseAddrs(c.HubAddr); err != nil {
		bad("--hub %q: %v", c.HubAddr, err)
	}
	if c.StateDir == "" {
		bad("--state-dir: required")
	}
	if !c.registered() {
		if c.JoinToken == "" || c.ClusterName == "" || c.HubCAFile == "" {
			bad("first start: give --join-token, --cluster-name and --hub-ca (the state directory %s holds no identity yet)", c.StateDir)
		}
	}
	if c.Concurrency <= 0 || c.Concurrency > 64 {
		bad("--concurrency %d: between 1 and 64", c.Concurrency)
	}
	if c.SyncInterval < time.Second {
		bad("--sync-interval %v: at least 1s, such as 5m", c.SyncInterval)
	}
	if !(c.KubeAPIQPS > 0) || c.KubeAPIQPS > math.MaxFloat32 {
		bad("--kube-api-qps %v: a positive number of requests per second, such as %d", c.KubeAPIQPS, apply.DefaultQPS)
	}
	if c.KubeAPIBurst <= 0 {
		bad("--kube-api-burst %d: a positive number of requests, such as %d", c.KubeAPIBurst, apply.DefaultBurst)
	}
	if c.CacheMaxBytes < 1<<20 {
		bad("--cache-max-bytes %d: at least 1 MiB", c.CacheMaxBytes)
	}
	if c.MaxManifestBytes <= 0 {
		bad("--max-manifest-bytes %d: a positive number of bytes, such as %d (8 MiB)", c.MaxManifestBytes, render.DefaultMaxFileBytes)
	}
	if c.MaxRenderBytes <= 0 {
		bad("--max-render-bytes %d: a positive number of bytes, such as %d (16 MiB)", c.MaxRenderBytes, render.DefaultMaxBytes)
	}
	if c.MaxRenderObjects <= 0 {
		bad("--max-render-objects %d: a positive number, such as %d", c.MaxRenderObjects, render.DefaultMaxObjects)
	}
	if c.Heartbeat < time.Second {
		bad("--heartbeat %v: at least 1s", c.Heartbeat)
	}
	if c.BackoffMax < time.Second {
		bad("--backoff-max %v: at least 1s", c.BackoffMax)
	}
	if c.HookTimeout < time.Second {
		bad("--hook-timeout %v: at least 1s, such as %v", c.HookTimeout, apply.DefaultHookTimeout)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			bad("--metrics-addr %q: want HOST:PORT or :PORT, or empty to turn metrics off", c.MetricsAddr)
		}
	}
	return errors.Join(errs...)
}

func (c *Config) registered() bool {
	_, err := os.Stat(filepath.Join(c.StateDir, "agent.crt"))
	return err == nil
}
