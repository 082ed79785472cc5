package pgserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/drover-dev/drover/internal/testlog"
)

// testDir returns a directory for a server's Dir. t.TempDir's parent is
// 0700, which the unprivileged user PostgreSQL runs as under root cannot
// cross, so this one sits directly in os.TempDir.
func testDir(t *testing.T) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "pgserver-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	return filepath.Join(parent, "hub")
}

func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	opts.Logger = testlog.New(t)
	s, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestPGServerRestartKeepsData(t *testing.T) {
	dir := testDir(t)

	s := startServer(t, Options{Dir: dir})
	if err := s.EnsureDatabase(t.Context(), "drover"); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, s.URL("drover"))
	if _, err := conn.Exec(t.Context(), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}

	s2 := startServer(t, Options{Dir: dir})
	if err := s2.EnsureDatabase(t.Context(), "drover"); err != nil { // exists: a no-op
		t.Fatal(err)
	}
	var v string
	if err := connect(t, s2.URL("drover")).QueryRow(t.Context(), "SELECT v FROM kept").Scan(&v); err != nil {
		t.Fatalf("read after restart: %v", err)
	}
	if v != "still here" {
		t.Fatalf("after restart got %q", v)
	}
	if err := s2.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

func TestPGServerPassword(t *testing.T) {
	dir := testDir(t)
	// What an initdb interrupted by a crash leaves: Start clears it.
	if err := os.MkdirAll(filepath.Join(dir, "data.initdb", "base"), 0o700); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, Options{Dir: dir, Ephemeral: true})

	fi, err := os.Stat(filepath.Join(dir, "password"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("password file mode %v, want 0600", perm)
	}
	pw, err := os.ReadFile(filepath.Join(dir, "password"))
	if err != nil {
		t.Fatal(err)
	}
	if log, err := os.ReadFile(s.LogPath()); err != nil {
		t.Fatal(err)
	} else if strings.Contains(string(log), strings.TrimSpace(string(pw))) {
		t.Error("server log contains the password")
	}

	// The same URL without the password, and with a wrong one.
	for name, mutate := range map[string]func(*pgx.ConnConfig){
		"no password":    func(c *pgx.ConnConfig) { c.Password = "" },
		"wrong password": func(c *pgx.ConnConfig) { c.Password = "not-the-password" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := pgx.ParseConfig(s.URL("postgres"))
			if err != nil {
				t.Fatal(err)
			}
			mutate(cfg)
			cfg.Fallbacks = nil
			conn, err := pgx.ConnectConfig(t.Context(), cfg)
			if err == nil {
				conn.Close(t.Context())
				t.Fatal("connected without the right password")
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" { // invalid_password
				t.Fatalf("want invalid_password (28P01), got %v", err)
			}
		})
	}
	connect(t, s.URL("postgres")) // and with it
}

// TestPGServerCrashRestart kills the server the way a crash of the hub
// does (Pdeathsig is SIGKILL) and checks the next Start recovers.
func TestPGServerCrashRestart(t *testing.T) {
	dir := testDir(t)
	s := startServer(t, Options{Dir: dir}) // durable, as the hub runs it
	if _, err := connect(t, s.URL("postgres")).Exec(t.Context(), "CREATE TABLE survived (v int); INSERT INTO survived VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("postgres did not die")
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); err != nil {
		t.Fatalf("expected a stale postmaster.pid after the crash: %v", err)
	}
	if err := s.Stop(); err == nil {
		t.Error("Stop after a crash returned nil, want the exit")
	}

	s2 := startServer(t, Options{Dir: dir})
	var v int
	if err := connect(t, s2.URL("postgres")).QueryRow(t.Context(), "SELECT v FROM survived").Scan(&v); err != nil || v != 7 {
		t.Fatalf("after crash restart: v=%d err=%v", v, err)
	}
}

// TestPGServerDiesWithParent checks the backstop: a process that started a
// server and is killed without stopping it takes the server along.
func TestPGServerDiesWithParent(t *testing.T) {
	dir := testDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPGServerHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	pid := 0
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for pid == 0 && sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		fmt.Sscanf(sc.Text(), "postmaster pid %d", &pid)
	}
	if pid == 0 {
		cmd.Wait()
		t.Fatalf("helper started no server:\n%s%s", out.String(), stderr.String())
	}
	if !alive(pid) {
		t.Fatalf("postmaster %d not running", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(-pid, syscall.SIGKILL)
			t.Fatalf("postmaster %d still running 10s after its parent was killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const helperEnv = "PGSERVER_TEST_HELPER_DIR"

// TestPGServerHelperProcess is TestPGServerDiesWithParent's child: it
// starts a server, prints its PID and waits to be killed. Run on its own
// it does nothing.
func TestPGServerHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		return
	}
	s, err := Start(t.Context(), Options{Dir: dir, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("postmaster pid %d\n", s.cmd.Process.Pid)
	select {}
}

// alive reports whether pid runs (a zombie waiting to be reaped is dead).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

func TestPGServerTwiceOnOneDir(t *testing.T) {
	dir := testDir(t)
	first := startServer(t, Options{Dir: dir, Ephemeral: true})
	s, err := Start(t.Context(), Options{Dir: dir, Ephemeral: true})
	if err == nil {
		s.Stop()
		t.Fatal("a second server started on the same directory")
	}
	t.Logf("second start: %v", err)
	if _, err := os.Stat(first.LogPath() + ".1"); err == nil {
		t.Error("the failed second start rotated the running server's log")
	}
	connect(t, first.URL("postgres"))
}

func TestPGServerMissingBinaries(t *testing.T) {
	t.Setenv(BinDirEnv, t.TempDir())
	_, err := Start(t.Context(), Options{Dir: t.TempDir()})
	if err == nil || !errors.Is(err, errNoBinaries) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Fatalf("want the missing-binaries error, got %v", err)
	}
}
