package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/drover-dev/drover/internal/version"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// maxSecretBytes bounds a token or password read from stdin.
const maxSecretBytes = 64 << 10

func runLogin(ctx context.Context, x *invocation, args []string) error {
	if _, err := x.parseN(args, 0); err != nil {
		return err
	}
	path, err := x.configPath()
	if err != nil {
		return err
	}
	saved, err := loadConfig(path)
	if err != nil {
		return err
	}
	server := x.globals.server
	if server == "" {
		server = saved.Server
	}
	u, err := parseServer(server)
	if err != nil {
		return err
	}
	token := x.globals.token
	if token == "" {
		if token, err = x.readSecret("API token: "); err != nil {
			return fmt.Errorf("read the token: %w", err)
		}
		if token == "" {
			return x.usageErrorf("no token: pipe it on stdin (droverctl login --server URL < token-file) or pass --token")
		}
	}
	var resp droverv1.GetHubStatusResponse
	if err := newClient(u, token, x.cli.HTTPClient).call(ctx, "GET", apiPath("status"), nil, nil, &resp); err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.HTTPStatus == 401 {
			// Not the APIError itself: its hint says to log in.
			return fmt.Errorf("log in to %s: %s", u.Redacted(), ae.Message)
		}
		return err
	}
	if err := saveConfig(path, config{Server: u.String(), Token: token}); err != nil {
		return err
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		fmt.Fprintf(x.errOut(), "warning: %s is plain HTTP: the token crosses the network unencrypted; serve the hub behind TLS\n", u.Redacted())
	}
	st := resp.GetStatus()
	fmt.Fprintf(x.out(), "Logged in to %s (hub %s, %s); saved to %s\n", u.Redacted(), st.GetVersion(), st.GetState(), path)
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readSecret reads a secret from stdin: typed without echo at a terminal,
// else the whole of stdin with surrounding space trimmed.
func (x *invocation) readSecret(prompt string) (string, error) {
	if f, ok := x.cli.Stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(x.errOut(), prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(x.errOut())
		return strings.TrimSpace(string(b)), err
	}
	if x.cli.Stdin == nil {
		return "", nil
	}
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(x.cli.Stdin), maxSecretBytes+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxSecretBytes {
		return "", fmt.Errorf("more than %d bytes on stdin", maxSecretBytes)
	}
	return strings.TrimSpace(string(b)), nil
}

func runStatus(ctx context.Context, x *invocation, args []string) error {
	o := x.outputFlag(false)
	if _, err := x.parseN(args, 0); err != nil {
		return err
	}
	if err := x.checkOutput(*o, false); err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.GetHubStatusResponse
	if err := c.call(ctx, "GET", apiPath("status"), nil, nil, &resp); err != nil {
		return err
	}
	if *o != outTable {
		return printMessage(x.out(), *o, &resp)
	}
	st := resp.GetStatus()
	f := newFields(x.out())
	f.add("Server", c.base.Redacted())
	f.add("Version", st.GetVersion())
	f.add("State", st.GetState())
	f.add("Replica", st.GetReplica())
	f.add("Connected agents", fmt.Sprint(st.GetConnectedAgents()))
	f.add("Problems", strings.Join(st.GetProblems(), "\n"))
	return f.flush()
}

func runVersion(_ context.Context, x *invocation, args []string) error {
	if _, err := x.parseN(args, 0); err != nil {
		return err
	}
	fmt.Fprintln(x.out(), "droverctl", version.Version)
	return nil
}
