package ctl

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/agent/render"
	"github.com/drover-dev/drover/agent/source"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// renderCacheBytes bounds the scratch fetch of one `droverctl render`; the
// directory is removed when it ends.
const renderCacheBytes = 1 << 30

// runRender prints what one cluster's agent would apply for an
// application: the hub resolves the cluster's part of the assignment
// (overrides, variables, Helm values, the release it runs), and droverctl
// fetches and renders it here with the agent's own fetch and render code,
// so what it prints is what the agent applies. The hub never hands out
// credentials (only a CA bundle): a private source needs --username and
// --password-stdin.
func runRender(ctx context.Context, x *invocation, args []string) error {
	var cluster, commit, username string
	var valuesOnly, passwordStdin bool
	x.fs.StringVar(&cluster, "cluster", "", "the cluster whose labels, overrides and Kubernetes version to render with (required)")
	x.fs.StringVar(&commit, "commit", "", "a release of the application (commit SHA or VERSION@sha256:HEX) instead of the one the cluster runs")
	x.fs.BoolVar(&valuesOnly, "values-only", false, "print the merged Helm values instead of the objects")
	x.fs.StringVar(&username, "username", "", "user for a private source")
	x.fs.BoolVar(&passwordStdin, "password-stdin", false, "read the private source's password or token from stdin")
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	if cluster == "" {
		return x.usageErrorf("--cluster is required: a render is always for one cluster")
	}
	var creds *droverv1.RepoCredentials
	if username != "" || passwordStdin {
		if !passwordStdin {
			return x.usageErrorf("--password-stdin is required with --username (passwords never go on the command line)")
		}
		creds = &droverv1.RepoCredentials{Username: username}
		if creds.Password, err = x.readSecret("Password: "); err != nil {
			return fmt.Errorf("read the password: %w", err)
		}
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var q url.Values
	if commit != "" {
		q = url.Values{"commit": {commit}}
	}
	var resp droverv1.PreviewAssignmentResponse
	if err := c.call(ctx, "GET", apiPath("applications", pos[0], "clusters", cluster, "assignment"), q, nil, &resp); err != nil {
		return err
	}
	aa := resp.GetAssignment()
	if valuesOnly && aa.GetRender() != droverv1.RenderType_RENDER_TYPE_HELM {
		return fmt.Errorf("--values-only: application %s is not rendered with Helm", aa.GetName())
	}
	if creds != nil {
		// The hub sends a source's CA bundle, never its secrets.
		creds.CaPem = aa.GetCredentials().GetCaPem()
		aa.Credentials = creds
	}

	scratch, err := os.MkdirTemp("", "droverctl-render-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	cache, err := source.NewCache(scratch, renderCacheBytes, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	dir, release, err := cache.Fetch(ctx, aa)
	if err != nil {
		return err
	}
	defer release()

	opts := render.Options{KubeVersion: resp.GetFacts().GetKubernetesVersion()}
	if valuesOnly {
		vals, err := opts.HelmValues(ctx, dir, aa)
		if err != nil {
			return err
		}
		out, err := yaml.Marshal(vals)
		if err != nil {
			return err
		}
		_, err = x.out().Write(out)
		return err
	}
	objs, err := opts.Render(ctx, dir, aa)
	if err != nil {
		return err
	}
	if err := printObjects(x.out(), objs); err != nil {
		return err
	}
	fmt.Fprintf(x.errOut(), "%d objects of %s at %s for cluster %s (Kubernetes %s).\n",
		len(objs), aa.GetName(), aa.GetCommit(), cluster, orDefault(resp.GetFacts().GetKubernetesVersion(), "unknown: the agent has not reported it"))
	return nil
}

// printObjects writes objects as one YAML stream, in render order.
func printObjects(w io.Writer, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}
