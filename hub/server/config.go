package server

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/drover-dev/drover/hub/replicas"
	"github.com/drover-dev/drover/hub/secrets"
	"github.com/drover-dev/drover/internal/envflag"
)

// Config is drover-hub's configuration. Every field has a flag and a
// DROVER_... environment variable; flags win.
type Config struct {
	// DataDir holds the CA, the credential key, the initial admin token and,
	// without DatabaseURL, the embedded PostgreSQL.
	DataDir string
	// DatabaseURL is a PostgreSQL URL; empty runs a private PostgreSQL from
	// the machine's binaries in DataDir.
	DatabaseURL string
	// AgentAddr is where agents (gRPC, TLS) and gRPC admin clients connect.
	AgentAddr string
	// HTTPAddr serves the JSON admin API under /api/v1/ and health checks.
	HTTPAddr string
	// Hostnames are the names and addresses agents dial; they go into the
	// agent endpoint's serving certificate.
	Hostnames []string
	// CACertFile and CAKeyFile name an operator-supplied CA for agent
	// identities; empty generates one in DataDir.
	CACertFile, CAKeyFile string
	// SecretKeyFile holds the key that encrypts stored credentials; empty
	// means DataDir/secret.key, generated on first start.
	SecretKeyFile string
	// SecretKey is that key given directly, base64 of 32 bytes, from the
	// environment variable DROVER_SECRET_KEY only (a Kubernetes Secret as
	// env): flags show in the process list, and a Secret mounted as files
	// is group-readable, which the key file loader refuses.
	SecretKey string
	// Replica names this hub process, unique among the live replicas on
	// one database.
	Replica string
	// PeerAddr is where this replica gossips with the others (memberlist,
	// UDP and TCP), HOST:PORT; empty runs a single replica.
	PeerAddr string
	// Peers are HOST:PORT addresses of the other replicas' PeerAddr, or a
	// name resolving to them all (a headless Service).
	Peers []string
	// GossipKeyFile holds the key that encrypts gossip, base64 of 16, 24
	// or 32 bytes; the same on every replica.
	GossipKeyFile string
	// GossipKey is that key given directly, base64, from the environment
	// variable DROVER_GOSSIP_KEY only (a Kubernetes Secret as env): flags
	// show in the process list.
	GossipKey string
	// OfflineTimeout is how long after its last heartbeat a cluster is shown
	// offline.
	OfflineTimeout time.Duration
	// PollInterval is how often Git refs are resolved by default.
	PollInterval time.Duration
	// PingInterval is how often the hub pings idle agent streams.
	PingInterval time.Duration
	// LogLevel is the least level logged: debug, info, warn or error.
	LogLevel slog.Level
	// MaxAgentAdmissions bounds the agent registrations and new-stream
	// syncs the hub works on at once; more arriving agents are asked to
	// retry later, so a reconnect storm queues at the agents rather than
	// in the hub and PostgreSQL.
	MaxAgentAdmissions int
	// EventRetention is how long events are kept; 0 keeps them forever.
	EventRetention time.Duration
	// DebugAddr, when set, serves net/http/pprof there so a live hub can be
	// profiled. It has no authentication: bind it to loopback.
	DebugAddr string
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	hosts := []string{"localhost", "127.0.0.1"}
	if host != "" && host != "localhost" {
		hosts = append(hosts, host)
	}
	return Config{
		DataDir:        "drover-data",
		AgentAddr:      ":8443",
		HTTPAddr:       "127.0.0.1:8080",
		Hostnames:      hosts,
		Replica:        host,
		OfflineTimeout: 90 * time.Second,
		PollInterval:   time.Minute,
		PingInterval:   60 * time.Second,
		LogLevel:       slog.LevelInfo,
		// A new stream costs two or three queries; with the pool's few
		// connections, more in flight than this only wait longer.
		MaxAgentAdmissions: 32,
		EventRetention:     90 * 24 * time.Hour,
	}
}

// RegisterFlags binds c's fields to flags on fs, each with its DROVER_...
// environment variable.
func (c *Config) RegisterFlags(fs *envflag.FlagSet) {
	fs.String(&c.DataDir, "data-dir", "DROVER_DATA_DIR", "directory for the CA, keys, the initial admin token and the embedded PostgreSQL")
	fs.String(&c.DatabaseURL, "database-url", "DROVER_DATABASE_URL", "PostgreSQL URL; empty runs a private PostgreSQL in the data directory")
	fs.String(&c.AgentAddr, "agent-addr", "DROVER_AGENT_ADDR", "listen address of the agent endpoint (gRPC over TLS)")
	fs.String(&c.HTTPAddr, "http-addr", "DROVER_HTTP_ADDR", "listen address of the JSON admin API and dashboard")
	fs.List(&c.Hostnames, "hostnames", "DROVER_HOSTNAMES", "comma-separated names and IPs agents use to reach the hub, for its serving certificate")
	fs.String(&c.CACertFile, "ca-cert", "DROVER_CA_CERT", "PEM CA certificate for agent identities (default: generated in the data directory)")
	fs.String(&c.CAKeyFile, "ca-key", "DROVER_CA_KEY", "PEM CA private key for agent identities")
	fs.String(&c.SecretKeyFile, "secret-key-file", "DROVER_SECRET_KEY_FILE", "key file for encrypting stored credentials (default: DATA_DIR/secret.key; or set DROVER_SECRET_KEY)")
	if v, ok := os.LookupEnv(secretKeyEnv); ok {
		c.SecretKey = v
	}
	fs.String(&c.Replica, "replica", "DROVER_REPLICA", "name of this hub replica, unique among the replicas sharing the database")
	fs.String(&c.PeerAddr, "peer-addr", "DROVER_PEER_ADDR", "HOST:PORT where this replica gossips with the other replicas (UDP and TCP); empty runs a single replica")
	fs.List(&c.Peers, "peers", "DROVER_PEERS", "comma-separated HOST:PORT gossip addresses of the other replicas, or a name resolving to them all")
	fs.String(&c.GossipKeyFile, "gossip-key-file", "DROVER_GOSSIP_KEY_FILE", "file holding the gossip encryption key, base64 of 16, 24 or 32 bytes, the same on every replica (or set DROVER_GOSSIP_KEY)")
	if v, ok := os.LookupEnv(gossipKeyEnv); ok {
		c.GossipKey = v
	}
	fs.Duration(&c.OfflineTimeout, "offline-timeout", "DROVER_OFFLINE_TIMEOUT", "time since the last heartbeat after which a cluster is offline")
	fs.Duration(&c.PollInterval, "poll-interval", "DROVER_POLL_INTERVAL", "default interval for resolving Git refs")
	fs.Duration(&c.PingInterval, "ping-interval", "DROVER_PING_INTERVAL", "interval of hub pings on idle agent streams")
	fs.LogLevel(&c.LogLevel, "log-level", "DROVER_LOG_LEVEL")
	fs.Int(&c.MaxAgentAdmissions, "max-agent-admissions", "DROVER_MAX_AGENT_ADMISSIONS", "agent registrations and new-stream syncs handled at once; others are told to retry later")
	fs.Duration(&c.EventRetention, "event-retention", "DROVER_EVENT_RETENTION", "how long events are kept, e.g. 2160h (90 days); 0 keeps them forever")
	fs.String(&c.DebugAddr, "debug-addr", "DROVER_DEBUG_ADDR", "listen address for Go profiling (net/http/pprof under /debug/pprof/), off when empty; it has no authentication, so use loopback such as 127.0.0.1:6060")
}

// Validate reports every problem, each saying how to fix it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.DataDir == "" {
		bad("--data-dir: required (a directory the hub may create and write)")
	}
	for name, addr := range map[string]string{"--agent-addr": c.AgentAddr, "--http-addr": c.HTTPAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("%s %q: want HOST:PORT or :PORT (%v)", name, addr, err)
		}
	}
	if c.DebugAddr != "" {
		if _, _, err := net.SplitHostPort(c.DebugAddr); err != nil {
			bad("--debug-addr %q: want HOST:PORT such as 127.0.0.1:6060, or empty to turn it off (%v)", c.DebugAddr, err)
		}
	}
	if c.Replica == "" {
		bad("--replica: required (a name for this hub process, unique among the replicas sharing the database)")
	}
	if c.PeerAddr != "" {
		if err := replicas.CheckPeerAddr(c.PeerAddr); err != nil {
			bad("--peer-addr: %v", err)
		}
	}
	for _, p := range c.Peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			bad("--peers %q: want HOST:PORT, the other replicas' --peer-addr (%v)", p, err)
		}
	}
	if len(c.Peers) > 0 && c.PeerAddr == "" {
		bad("--peers: needs --peer-addr, this replica's own gossip address")
	}
	if _, err := c.gossipKey(); err != nil {
		bad("%v", err)
	}
	if c.SecretKeyFile != "" && c.SecretKey != "" {
		bad("--secret-key-file and %s: give one of them", secretKeyEnv)
	} else if c.SecretKey != "" {
		if _, err := secrets.NewBox([]byte(c.SecretKey)); err != nil {
			bad("%s: %v", secretKeyEnv, err)
		}
	}
	if len(c.Hostnames) == 0 {
		bad("--hostnames: give at least one name or IP agents use to reach the hub")
	}
	if (c.CACertFile == "") != (c.CAKeyFile == "") {
		bad("--ca-cert and --ca-key: give both or neither")
	}
	if c.DatabaseURL != "" && !strings.HasPrefix(c.DatabaseURL, "postgres://") && !strings.HasPrefix(c.DatabaseURL, "postgresql://") {
		bad("--database-url: want postgres://USER:PASSWORD@HOST:PORT/DB")
	}
	for name, d := range map[string]time.Duration{"--offline-timeout": c.OfflineTimeout, "--poll-interval": c.PollInterval, "--ping-interval": c.PingInterval} {
		if d <= 0 {
			bad("%s: must be a positive duration such as 90s or 1m", name)
		}
	}
	if c.EventRetention < 0 || (c.EventRetention > 0 && c.EventRetention < time.Hour) {
		bad("--event-retention %v: at least 1h, or 0 to keep events forever", c.EventRetention)
	}
	if c.MaxAgentAdmissions <= 0 {
		bad("--max-agent-admissions: must be a positive number such as 32")
	}
	if c.PollInterval > 0 && c.PollInterval < 5*time.Second {
		bad("--poll-interval %v: at least 5s, to spare the Git servers (use webhooks or `droverctl app refresh` for speed)", c.PollInterval)
	}
	return errors.Join(errs...)
}

// gossipKeyEnv holds the gossip key itself, for a Secret given as env.
const gossipKeyEnv = "DROVER_GOSSIP_KEY"

// gossipKey returns the gossip encryption key from GossipKeyFile or
// GossipKey, or nil when neither is set.
func (c *Config) gossipKey() ([]byte, error) {
	var text, from string
	switch {
	case c.GossipKeyFile != "" && c.GossipKey != "":
		return nil, fmt.Errorf("--gossip-key-file and %s: give one of them", gossipKeyEnv)
	case c.GossipKeyFile != "":
		b, err := os.ReadFile(c.GossipKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--gossip-key-file: %w", err)
		}
		text, from = string(b), "--gossip-key-file "+c.GossipKeyFile
	case c.GossipKey != "":
		text, from = c.GossipKey, gossipKeyEnv
	default:
		return nil, nil
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("%s: not base64 (make a key with `head -c 32 /dev/urandom | base64`)", from)
	}
	if err := replicas.CheckGossipKey(key); err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	return key, nil
}

// secretKeyEnv holds the credential key itself, for a Secret given as env.
const secretKeyEnv = "DROVER_SECRET_KEY"

// credentialKey returns the Box for stored credentials and where its key
// came from (for the log: never the key): SecretKey, SecretKeyFile, or
// DataDir/secret.key, created on first start.
func (c *Config) credentialKey() (box *secrets.Box, from string, err error) {
	if c.SecretKey != "" {
		box, err = secrets.NewBox([]byte(c.SecretKey))
		if err != nil {
			return nil, secretKeyEnv, fmt.Errorf("%s: %w", secretKeyEnv, err)
		}
		return box, secretKeyEnv, nil
	}
	path := c.SecretKeyFile
	if path == "" {
		path = filepath.Join(c.DataDir, "secret.key")
	}
	box, err = secrets.LoadOrCreateKey(path)
	return box, path, err
}
