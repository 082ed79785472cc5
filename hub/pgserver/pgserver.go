// Package pgserver runs a private PostgreSQL server from the machine's own
// PostgreSQL binaries (initdb and postgres).
//
// The hub uses it as its embedded default: drover-hub without
// --database-url keeps a PostgreSQL cluster in its data directory, starts it
// on start and stops it on exit. The end-to-end test bed uses it for a
// throwaway server. Production passes --database-url instead.
//
// Options.Dir holds:
//
//	data/             the cluster (PGDATA); made by initdb on the first start, reused after
//	password          the superuser's password, mode 0600, made on the first start
//	postgres.log      the server's log for the current run (postgres.log.1: the run before)
//
// The server listens on 127.0.0.1 only, has no Unix socket, and asks every
// client for the superuser's password (SCRAM-SHA-256). The password never
// appears in logs; it is in the password file and in URL's result.
//
// PostgreSQL refuses to run as root. When this process is root, initdb and
// postgres run as Options.User (default "nobody"), Dir is handed to that
// user, and every directory above Dir must be searchable by it (o+x):
// /var/lib/drover under a stock / is fine, a directory under root's 0700
// home is not. Start checks this and says how to fix it.
//
// The server is started in its own process group with a parent-death
// signal, so it does not outlive this process even when Stop is never
// called (a crash, SIGKILL). After such an end the next Start recovers the
// cluster as PostgreSQL does after any crash.
package pgserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/drover-dev/drover/internal/atomicfile"
	"github.com/drover-dev/drover/internal/spawn"
)

// Superuser is the PostgreSQL role URL connects as.
const Superuser = "postgres"

const (
	defaultStartTimeout = 2 * time.Minute
	defaultStopTimeout  = 30 * time.Second
	// portAttempts bounds retries when a port picked as free was taken
	// before postgres could bind it.
	portAttempts = 5
)

// Options configure Start.
type Options struct {
	// Dir is the server's directory (see the package comment). Required.
	// It is created when missing and kept: a second Start on the same Dir
	// serves the same data.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one on every start.
	Port int
	// Ephemeral trades durability for speed (fsync, synchronous_commit and
	// full_page_writes off): for tests, never for data that matters.
	Ephemeral bool
	// Settings are extra server settings (postgres -c NAME=VALUE), e.g.
	// {"max_connections": "300"}. They win over the ones Start sets.
	Settings map[string]string
	// User is the account PostgreSQL runs as when this process is root;
	// default DefaultUser. Ignored otherwise.
	User string
	// StartTimeout bounds initdb plus the wait until the server accepts
	// connections (crash recovery included); default 2 minutes.
	StartTimeout time.Duration
	// StopTimeout is how long Stop waits after asking for a fast shutdown
	// before it kills the server; default 30 seconds.
	StopTimeout time.Duration
	// Logger receives the server's lifecycle events (not its log, which is
	// in postgres.log); nil discards them.
	Logger *slog.Logger
}

// Server is a running PostgreSQL server. Its methods are safe for
// concurrent use.
type Server struct {
	dir         string
	dataDir     string
	logPath     string
	port        int
	password    string
	stopTimeout time.Duration
	log         *slog.Logger

	cmd     *exec.Cmd
	done    chan struct{} // closed when the postmaster has exited
	waitErr error         // the postmaster's exit; read only after done is closed

	stopOnce sync.Once
	stopErr  error
}

// Start runs initdb when Dir holds no cluster yet, then starts postgres
// and waits until it accepts connections. ctx bounds the start only: the
// server keeps running after ctx ends, until Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("pgserver: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("pgserver: data directory %q: %w", opts.Dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	startTimeout := opts.StartTimeout
	if startTimeout <= 0 {
		startTimeout = defaultStartTimeout
	}
	stopTimeout := opts.StopTimeout
	if stopTimeout <= 0 {
		stopTimeout = defaultStopTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	bins, err := findBinaries()
	if err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	owner, err := lookupRunAs(opts.User)
	if err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	if err := prepareDir(dir, owner); err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	dataDir := filepath.Join(dir, "data")
	// First, so a server already running on Dir is left untouched.
	if err := clearStaleLock(dataDir, log); err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	if err := waitForOldBackends(ctx, dataDir, log); err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	logPath := filepath.Join(dir, "postgres.log")
	logFile, err := openLog(logPath)
	if err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	defer logFile.Close() // initdb's; each postmaster opens the log itself

	password, err := ensureCluster(ctx, bins, dir, dataDir, owner, opts.Ephemeral, logFile, log)
	if err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	if err := writeHBA(dataDir, owner); err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}

	for attempt := 1; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = freePort(); err != nil {
				return nil, fmt.Errorf("pgserver: pick a port: %w", err)
			}
		}
		s := &Server{
			dir:         dir,
			dataDir:     dataDir,
			logPath:     logPath,
			port:        port,
			password:    password,
			stopTimeout: stopTimeout,
			log:         log,
		}
		err := s.start(ctx, bins.postgres, owner, opts)
		if err == nil {
			log.Info("postgres ready", "dir", dir, "port", port, "pid", s.cmd.Process.Pid)
			return s, nil
		}
		if opts.Port == 0 && attempt < portAttempts && errors.Is(err, errPortTaken) {
			log.Warn("postgres port taken, retrying with another", "port", port)
			continue
		}
		return nil, fmt.Errorf("pgserver: start postgres in %s: %w", dir, err)
	}
}

// URL returns a connection URL for database db on this server, as the
// superuser, password included: keep it out of logs.
func (s *Server) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(Superuser, s.password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the TCP port the server listens on at 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Dir is the server's directory (Options.Dir, made absolute).
func (s *Server) Dir() string { return s.dir }

// LogPath is the file the server logs to.
func (s *Server) LogPath() string { return s.logPath }

// Done is closed when the server has exited, whether through Stop or not.
func (s *Server) Done() <-chan struct{} { return s.done }

// EnsureDatabase creates database name unless it exists.
func (s *Server) EnsureDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: made meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Stop shuts the server down in PostgreSQL's "fast" mode (SIGINT: open
// transactions are rolled back, the cluster is left clean), kills it when
// that takes longer than Options.StopTimeout, and waits for it to exit.
// Further calls return the first call's result.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Server) stop() error {
	select {
	case <-s.done:
		return fmt.Errorf("postgres in %s had already exited: %w%s", s.dir, exitError(s.waitErr), logTail(s.logPath))
	default:
	}
	pid := s.cmd.Process.Pid
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.log.Warn("signal postgres", "pid", pid, "err", err)
	}
	timer := time.NewTimer(s.stopTimeout)
	defer timer.Stop()
	select {
	case <-s.done:
		s.log.Info("postgres stopped", "dir", s.dir, "pid", pid)
		if s.waitErr != nil {
			return fmt.Errorf("postgres fast shutdown in %s: %w%s", s.dir, s.waitErr, logTail(s.logPath))
		}
		return nil
	case <-timer.C:
	}
	s.log.Warn("postgres did not shut down in time, killing it", "pid", pid, "timeout", s.stopTimeout)
	_ = syscall.Kill(-pid, syscall.SIGKILL) // the process group: postmaster and backends
	<-s.done
	return fmt.Errorf("postgres in %s did not shut down within %s and was killed", s.dir, s.stopTimeout)
}

// errPortTaken marks a start that failed only because the port was in use.
var errPortTaken = errors.New("port already in use")

// start runs the postmaster and waits until it accepts connections. On
// error nothing is left running.
func (s *Server) start(ctx context.Context, postgresBin string, owner *runAs, opts Options) error {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(s.port),
		"unix_socket_directories": "",
		"logging_collector":       "off",
	}
	if opts.Ephemeral {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	args := []string{"-D", s.dataDir}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}

	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(postgresBin, args...)
	cmd.Dir = s.dir
	cmd.Env = serverEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true, // a terminal's ^C goes to us; we stop postgres in order
		Credential: owner.credential(),
	}
	// spawn.Start: PostgreSQL dies with the hub, even with a kill -9.
	if err := spawn.Start(cmd); err != nil {
		logFile.Close()
		return fmt.Errorf("run %s: %w", postgresBin, err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() {
		s.waitErr = cmd.Wait()
		logFile.Close()
		close(s.done)
	}()

	if err := s.waitReady(ctx); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		return err
	}
	return nil
}

// waitReady polls with real connections until the server accepts one.
func (s *Server) waitReady(ctx context.Context) error {
	const interval = 50 * time.Millisecond
	var lastErr error
	for {
		select {
		case <-s.done:
			tail := logTail(s.logPath)
			if strings.Contains(tail, "could not bind") || strings.Contains(tail, "Address already in use") {
				return fmt.Errorf("%w: %d%s", errPortTaken, s.port, tail)
			}
			return fmt.Errorf("postgres exited during start: %w%s", exitError(s.waitErr), tail)
		default:
		}
		err := s.ping(ctx)
		if err == nil {
			return nil
		}
		lastErr = err
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "28") { // invalid authorization
			return fmt.Errorf("postgres rejects the password in %s: %w", filepath.Join(s.dir, "password"), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgres not ready: %w (last attempt: %v)%s", ctx.Err(), lastErr, logTail(s.logPath))
		case <-s.done:
		case <-time.After(interval):
		}
	}
}

func (s *Server) ping(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(s.URL("postgres"))
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = 2 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// prepareDir makes dir (0700) and hands it to owner, who must be able to
// reach it.
func prepareDir(dir string, owner *runAs) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := owner.checkSearchable(dir); err != nil {
		return err
	}
	return owner.chown(dir)
}

// ensureCluster returns the superuser's password, running initdb first
// when dataDir has no cluster yet.
func ensureCluster(ctx context.Context, bins binaries, dir, dataDir string, owner *runAs, ephemeral bool, logFile io.Writer, log *slog.Logger) (string, error) {
	pwPath := filepath.Join(dir, "password")
	_, err := os.Stat(filepath.Join(dataDir, "PG_VERSION"))
	switch {
	case err == nil:
		pw, err := os.ReadFile(pwPath)
		if err != nil {
			return "", fmt.Errorf("read the superuser password of the cluster in %s: %w (the file is made with the cluster; without it the cluster cannot be reached)", dataDir, err)
		}
		return strings.TrimSpace(string(pw)), nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("look for a cluster in %s: %w", dataDir, err)
	}
	if entries, err := os.ReadDir(dataDir); err == nil && len(entries) > 0 {
		return "", fmt.Errorf("%s is not empty but holds no cluster (no PG_VERSION); remove it to start afresh", dataDir)
	}

	// initdb works in a scratch directory renamed into place when it is
	// done, so a start interrupted mid-initdb leaves nothing that looks
	// like a cluster; the scratch directory is cleared on the next try.
	scratch := dataDir + ".initdb"
	if err := os.RemoveAll(scratch); err != nil {
		return "", fmt.Errorf("clear %s: %w", scratch, err)
	}
	password, err := newPassword()
	if err != nil {
		return "", err
	}
	// initdb reads the password from a file it can read as the run-as
	// user; the file lives only while initdb runs.
	initPW := filepath.Join(dir, ".initdb-password")
	if err := os.WriteFile(initPW, []byte(password+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write initdb password file: %w", err)
	}
	defer os.Remove(initPW)
	if err := owner.chown(initPW); err != nil {
		return "", err
	}

	args := []string{
		"-D", scratch,
		"-U", Superuser,
		"--pwfile", initPW,
		"--auth-host", "scram-sha-256",
		"--auth-local", "scram-sha-256",
		"--encoding", "UTF8",
		"--locale", "C",
		"--no-instructions",
	}
	if ephemeral {
		args = append(args, "--no-sync")
	}
	log.Info("initdb", "dir", dataDir)
	start := time.Now()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bins.initdb, args...)
	cmd.Dir = dir
	cmd.Env = serverEnv()
	cmd.Stdout = io.MultiWriter(&out, logFile)
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: owner.credential()}
	err = spawn.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		os.RemoveAll(scratch)
		return "", fmt.Errorf("initdb %s: %w\n%s", dataDir, err, tailOf(out.String()))
	}
	// The password file before the cluster: a cluster is never without it.
	if err := atomicfile.Write(pwPath, []byte(password+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write password file: %w", err)
	}
	if err := os.Remove(dataDir); err != nil && !errors.Is(err, fs.ErrNotExist) { // an empty one, checked above
		return "", fmt.Errorf("replace empty %s: %w", dataDir, err)
	}
	if err := os.Rename(scratch, dataDir); err != nil {
		return "", fmt.Errorf("move the new cluster into place: %w", err)
	}
	log.Info("initdb done", "dir", dataDir, "took", time.Since(start).Round(time.Millisecond))
	return password, nil
}

// writeHBA replaces pg_hba.conf on every start so the cluster's access
// rules are always these, whatever an older version wrote.
func writeHBA(dataDir string, owner *runAs) error {
	const hba = `# Written by Drover (hub/pgserver) on every start; edits are lost.
# TCP from loopback only, password (SCRAM-SHA-256) required; no Unix socket.
host all all 127.0.0.1/32 scram-sha-256
`
	path := filepath.Join(dataDir, "pg_hba.conf")
	if err := atomicfile.Write(path, []byte(hba), 0o600); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	return owner.chown(path)
}

// clearStaleLock removes a postmaster.pid whose PID now belongs to a
// process that is not PostgreSQL (the PID was reused after a crash, common
// in containers). PostgreSQL itself handles a PID that is gone, and must
// refuse to start when the PID is a live postgres.
func clearStaleLock(dataDir string, log *slog.Logger) error {
	path := filepath.Join(dataDir, "postmaster.pid")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return nil // PostgreSQL explains a malformed lock file itself
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return nil
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return nil
	}
	if strings.TrimSpace(string(comm)) == "postgres" {
		return fmt.Errorf("a PostgreSQL server (PID %d) is already running on %s: stop it first", pid, dataDir)
	}
	log.Warn("removing stale postmaster.pid", "path", path, "pid", pid, "pid_now", strings.TrimSpace(string(comm)))
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale %s: %w", path, err)
	}
	return nil
}

// oldBackendsWait bounds how long Start waits for the processes of a server
// that died to let go of its shared memory. They notice their postmaster's
// death within a second or so, and exit.
const oldBackendsWait = 30 * time.Second

// waitForOldBackends waits until no process of a server that died (a hub
// killed with kill -9 takes its postmaster along, not at once its
// backends) is attached to that server's shared memory: PostgreSQL refuses
// to start beside one ("pre-existing shared memory block is still in
// use"). postmaster.pid names the segment; a segment that is gone or that
// nobody is attached to is fine.
func waitForOldBackends(ctx context.Context, dataDir string, log *slog.Logger) error {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil // no lock file: no server ever ran, or it stopped cleanly
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return nil
	}
	shm := strings.Fields(lines[6]) // "KEY ID"
	if len(shm) != 2 {
		return nil
	}
	id, err := strconv.Atoi(shm[1])
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, oldBackendsWait)
	defer cancel()
	for logged := false; ; {
		var desc unix.SysvShmDesc
		if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &desc); err != nil || desc.Nattch == 0 {
			return nil
		}
		if !logged {
			log.Info("waiting for the processes of the previous PostgreSQL server to exit", "dir", dataDir, "attached", desc.Nattch)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d processes of the previous PostgreSQL server on %s still hold its shared memory (segment %d) after %s: stop them first", desc.Nattch, dataDir, id, oldBackendsWait)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// openLog starts a new log for this run and keeps the previous one.
func openLog(path string) (*os.File, error) {
	if err := os.Rename(path, path+".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("rotate %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	return f, nil
}

// serverEnv is this process's environment without PG* variables, which
// would change what initdb and postgres do, and with the C locale.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

func newPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func exitError(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// logTail returns the end of the server log, formatted to follow an error.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return "\n--- " + path + " (end) ---\n" + tailOf(string(b))
}

func tailOf(s string) string {
	const maxLines, maxBytes = 30, 4096
	s = strings.TrimRight(s, "\n")
	if len(s) > maxBytes {
		s = s[len(s)-maxBytes:]
	}
	lines := strings.Split(s, "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}
