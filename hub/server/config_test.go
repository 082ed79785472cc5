package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-dev/drover/hub/secrets"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/envflag"
	"github.com/drover-dev/drover/internal/testlog"
)

// newKey returns a random credential key as `openssl rand -base64 32`
// prints it.
func newKey(t *testing.T) string {
	t.Helper()
	key := make([]byte, secrets.KeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(key) + "\n"
}

// The credential key comes from DROVER_SECRET_KEY, as a Kubernetes Secret
// given as env: the hub uses it (its key id is logged), writes no key file
// of its own, and neither logs nor prints the key.
func TestCredentialKeyFromEnvironment(t *testing.T) {
	key := newKey(t)
	t.Setenv("DROVER_SECRET_KEY", key)
	var cfg server.Config
	fs := envflag.New(flag.NewFlagSet("drover-hub", flag.ContinueOnError))
	cfg.RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}

	var out, logs bytes.Buffer
	h := startHubWriting(t, slog.New(slog.NewTextHandler(&logs, nil)), &out, func(c *server.Config) { c.SecretKey = cfg.SecretKey })
	box, err := secrets.NewBox([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	if want := "key_id=" + box.KeyID(); !strings.Contains(logs.String(), want) {
		t.Errorf("the hub's log does not name the key from DROVER_SECRET_KEY (%s):\n%s", want, logs.String())
	}
	if _, err := os.Stat(filepath.Join(h.cfg.DataDir, "secret.key")); !os.IsNotExist(err) {
		t.Errorf("the hub made its own key file beside DROVER_SECRET_KEY (%v)", err)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(key))
	for _, s := range []string{strings.TrimSpace(key), string(raw)} {
		if strings.Contains(logs.String(), s) || strings.Contains(out.String(), s) {
			t.Errorf("the hub logged or printed the credential key:\n%s\n%s", logs.String(), out.String())
		}
	}
}

// A credential key that is not one, or given twice, is refused with the
// configuration's error, which does not repeat the key, before the hub
// creates anything.
func TestBadCredentialKeyConfig(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "secret.key")
	if err := os.WriteFile(keyFile, []byte(newKey(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	short := base64.StdEncoding.EncodeToString([]byte("twenty bytes of key!"))
	for _, tc := range []struct {
		name, key, keyFile, want string
	}{
		{"key of a bad size", short, "", "DROVER_SECRET_KEY: invalid secrets key: 28 bytes: want 32 random bytes or their base64"},
		{"password, not a key", "correct horse battery staple", "", "DROVER_SECRET_KEY: invalid secrets key: 28 bytes"},
		{"key file and key", newKey(t), keyFile, "--secret-key-file and DROVER_SECRET_KEY: give one of them"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := startRefused(t, func(c *server.Config) { c.SecretKey, c.SecretKeyFile = tc.key, tc.keyFile }, tc.want)
			if strings.Contains(err.Error(), strings.TrimSpace(tc.key)) {
				t.Errorf("the error repeats the key: %v", err)
			}
		})
	}
}

// startRefused starts a hub with the defaults changed by mutate, which must
// make the configuration invalid: the hub is refused with an error holding
// want, before it creates its data directory. It returns that error.
func startRefused(t *testing.T, mutate func(*server.Config), want string) error {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.DatabaseURL = "postgres://drover@127.0.0.1:1/drover"
	mutate(&cfg)
	h, err := server.Start(context.Background(), cfg, testlog.New(t), io.Discard)
	if err == nil {
		h.Close()
		t.Fatal("the hub started")
	}
	if !strings.Contains(err.Error(), "invalid configuration") || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v\nwant the configuration error %q", err, want)
	}
	if _, err := os.Stat(cfg.DataDir); !os.IsNotExist(err) {
		t.Errorf("the refused hub created its data directory (%v)", err)
	}
	return err
}

// The credential key has no flag: a flag's value shows in the process
// list.
func TestNoCredentialKeyFlag(t *testing.T) {
	var cfg server.Config
	fs := flag.NewFlagSet("drover-hub", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(envflag.New(fs))
	if err := fs.Parse([]string{"--secret-key=" + strings.TrimSpace(newKey(t))}); err == nil {
		t.Errorf("drover-hub accepts the credential key as a flag")
	}
}
