package ctl

import (
	"context"
	"fmt"
	"net/url"
	"os"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// maxKeyFileBytes bounds an SSH key or known_hosts file.
const maxKeyFileBytes = 1 << 20

func runRepoSet(ctx context.Context, x *invocation, args []string) error {
	var username, keyFile, knownHostsFile, caFile string
	var passwordStdin bool
	x.fs.StringVar(&username, "username", "", "user for HTTPS basic auth")
	x.fs.BoolVar(&passwordStdin, "password-stdin", false, "read the password or access token from stdin")
	x.fs.StringVar(&keyFile, "ssh-key-file", "", "PEM SSH private key file")
	x.fs.StringVar(&knownHostsFile, "known-hosts-file", "", "known_hosts file with the server's host key")
	x.fs.StringVar(&caFile, "ca-file", "", "PEM CA certificates to trust for the repository's or registry's TLS (a private CA); alone, for one that needs no credentials")
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	basic := username != "" || passwordStdin
	ssh := keyFile != "" || knownHostsFile != ""
	creds := &droverv1.RepoCredentials{Username: username}
	if caFile != "" {
		if ssh {
			return x.usageErrorf("--ca-file is for HTTPS (Helm repositories, OCI registries); SSH verifies the host with --known-hosts-file")
		}
		if creds.CaPem, err = readSmallFile(caFile); err != nil {
			return fmt.Errorf("--ca-file: %w", err)
		}
	}
	switch {
	case basic && ssh:
		return x.usageErrorf("give either --username/--password-stdin or --ssh-key-file/--known-hosts-file, not both")
	case !basic && !ssh && caFile != "":
		// A CA alone: a registry or repository behind a private CA that
		// anyone may read.
	case basic:
		if !passwordStdin {
			return x.usageErrorf("--password-stdin is required with --username (passwords never go on the command line)")
		}
		if creds.Password, err = x.readSecret("Password: "); err != nil {
			return fmt.Errorf("read the password: %w", err)
		}
		if creds.Password == "" {
			return x.usageErrorf("--password-stdin: stdin held no password")
		}
	case ssh:
		if keyFile == "" || knownHostsFile == "" {
			return x.usageErrorf("--ssh-key-file and --known-hosts-file go together: the host key must be verified")
		}
		if creds.SshPrivateKey, err = readSmallFile(keyFile); err != nil {
			return fmt.Errorf("--ssh-key-file: %w", err)
		}
		if creds.SshKnownHosts, err = readSmallFile(knownHostsFile); err != nil {
			return fmt.Errorf("--known-hosts-file: %w", err)
		}
	default:
		return x.usageErrorf("give --username with --password-stdin, --ssh-key-file with --known-hosts-file, or --ca-file")
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.SetRepositoryCredentialsResponse
	req := &droverv1.SetRepositoryCredentialsRequest{Url: pos[0], Credentials: creds}
	if err := c.call(ctx, "PUT", apiPath("repositories"), nil, req, &resp); err != nil {
		return err
	}
	what := resp.GetRepository().GetAuthType() + " credentials"
	switch {
	case resp.GetRepository().GetAuthType() == "ca":
		what = "CA bundle"
	case caFile != "":
		what += " and CA bundle"
	}
	fmt.Fprintf(x.out(), "repository %s: %s set\n", resp.GetRepository().GetUrl(), what)
	return nil
}

func readSmallFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.Size() > maxKeyFileBytes {
		return "", fmt.Errorf("%s: larger than %d bytes", path, maxKeyFileBytes)
	}
	b, err := os.ReadFile(path)
	return string(b), err
}

func runRepoList(ctx context.Context, x *invocation, args []string) error {
	var resp droverv1.ListRepositoriesResponse
	_, printed, err := x.getList(ctx, args, false, apiPath("repositories"), &resp)
	if printed || err != nil {
		return err
	}
	if len(resp.GetRepositories()) == 0 {
		fmt.Fprintln(x.errOut(), "No repositories with credentials found.")
		return nil
	}
	now := x.now()
	t := newTable(x.out(), "URL", "AUTH", "USERNAME", "UPDATED")
	for _, r := range resp.GetRepositories() {
		t.row(r.GetUrl(), r.GetAuthType(), r.GetUsername(), age(now, r.GetUpdatedAt()))
	}
	return t.flush()
}

func runRepoDelete(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	q := url.Values{"url": {pos[0]}}
	if err := c.call(ctx, "DELETE", apiPath("repositories"), q, nil, &droverv1.DeleteRepositoryCredentialsResponse{}); err != nil {
		return err
	}
	fmt.Fprintf(x.out(), "repository %s: credentials deleted\n", pos[0])
	return nil
}
