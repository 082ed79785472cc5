package ctl

import (
	"context"
	"fmt"
	"strings"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// The create commands are the one place droverctl prints a secret: alone
// on its own stdout line, so `TOKEN=$(droverctl token create)` works, with
// what to do with it on stderr.

func runTokenCreate(ctx context.Context, x *invocation, args []string) error {
	req := &droverv1.CreateJoinTokenRequest{}
	var labels string
	x.fs.StringVar(&req.Ttl, "ttl", "24h", "how long the token is valid, e.g. 1h or 168h")
	x.fs.BoolVar(&req.Reusable, "reusable", false, "register any number of clusters until it expires (default: one)")
	x.fs.StringVar(&labels, "labels", "", "labels every cluster registered with the token starts with, K=V,K2=V2")
	x.fs.StringVar(&req.Description, "description", "", "what the token is for")
	if _, err := x.parseN(args, 0); err != nil {
		return err
	}
	var err error
	if req.Labels, err = parseLabelList(labels); err != nil {
		return x.usageErrorf("--labels: %v", err)
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.CreateJoinTokenResponse
	if err := c.call(ctx, "POST", apiPath("join-tokens"), nil, req, &resp); err != nil {
		return err
	}
	jt := resp.GetJoinToken()
	uses := "single-use"
	if jt.GetReusable() {
		uses = "reusable"
	}
	fmt.Fprintln(x.out(), resp.GetToken())
	fmt.Fprintf(x.errOut(), "join token %s created (%s, expires %s); it is shown only once\n", jt.GetId(), uses, until(x.now(), jt.GetExpiresAt()))
	fmt.Fprintln(x.errOut(), "hint: on the cluster, run: drover-agent --hub HUB_HOST:8443 --hub-ca hub-ca.pem --cluster-name NAME --join-token <the token above>")
	return nil
}

// parseLabelList reads "k=v,k2=v2". The hub checks keys and values.
func parseLabelList(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, p := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want KEY=VALUE", p)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("label %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

func runTokenList(ctx context.Context, x *invocation, args []string) error {
	var resp droverv1.ListJoinTokensResponse
	_, printed, err := x.getList(ctx, args, false, apiPath("join-tokens"), &resp)
	if printed || err != nil {
		return err
	}
	if len(resp.GetJoinTokens()) == 0 {
		fmt.Fprintln(x.errOut(), "No join tokens found.")
		return nil
	}
	now := x.now()
	t := newTable(x.out(), "ID", "REUSABLE", "USES", "LABELS", "EXPIRES", "CREATED BY", "AGE", "DESCRIPTION")
	for _, jt := range resp.GetJoinTokens() {
		t.row(jt.GetId(), fmt.Sprint(jt.GetReusable()), fmt.Sprint(jt.GetUseCount()), formatLabels(jt.GetLabels()),
			until(now, jt.GetExpiresAt()), jt.GetCreatedBy(), age(now, jt.GetCreatedAt()), jt.GetDescription())
	}
	return t.flush()
}

func runTokenDelete(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	if err := c.call(ctx, "DELETE", apiPath("join-tokens", pos[0]), nil, nil, &droverv1.DeleteJoinTokenResponse{}); err != nil {
		return err
	}
	fmt.Fprintf(x.out(), "join-token/%s deleted\n", pos[0])
	return nil
}

func runAPITokenCreate(ctx context.Context, x *invocation, args []string) error {
	req := &droverv1.CreateAPITokenRequest{}
	x.fs.StringVar(&req.Role, "role", "", "admin (may change everything) or viewer (may read)")
	x.fs.StringVar(&req.Ttl, "ttl", "", "how long the token is valid, e.g. 720h (default: no expiry)")
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	req.Name = pos[0]
	if req.Role == "" {
		return x.usageErrorf("--role is required: admin or viewer")
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.CreateAPITokenResponse
	if err := c.call(ctx, "POST", apiPath("api-tokens"), nil, req, &resp); err != nil {
		return err
	}
	t := resp.GetApiToken()
	expires := "never expires"
	if t.GetExpiresAt() != nil {
		expires = "expires " + until(x.now(), t.GetExpiresAt())
	}
	fmt.Fprintln(x.out(), resp.GetToken())
	fmt.Fprintf(x.errOut(), "API token %s (%s, role %s) created (%s); it is shown only once\n", t.GetId(), t.GetName(), t.GetRole(), expires)
	fmt.Fprintf(x.errOut(), "hint: use it with: droverctl login --server %s < FILE_WITH_THE_TOKEN\n", c.base.Redacted())
	return nil
}

func runAPITokenList(ctx context.Context, x *invocation, args []string) error {
	var resp droverv1.ListAPITokensResponse
	_, printed, err := x.getList(ctx, args, false, apiPath("api-tokens"), &resp)
	if printed || err != nil {
		return err
	}
	if len(resp.GetApiTokens()) == 0 {
		fmt.Fprintln(x.errOut(), "No API tokens found.")
		return nil
	}
	now := x.now()
	t := newTable(x.out(), "ID", "NAME", "ROLE", "LAST USED", "EXPIRES", "AGE")
	for _, a := range resp.GetApiTokens() {
		expires := "never"
		if a.GetExpiresAt() != nil {
			expires = until(now, a.GetExpiresAt())
		}
		t.row(a.GetId(), a.GetName(), a.GetRole(), age(now, a.GetLastUsedAt()), expires, age(now, a.GetCreatedAt()))
	}
	return t.flush()
}

func runAPITokenDelete(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	if err := c.call(ctx, "DELETE", apiPath("api-tokens", pos[0]), nil, nil, &droverv1.DeleteAPITokenResponse{}); err != nil {
		return err
	}
	fmt.Fprintf(x.out(), "api-token/%s deleted\n", pos[0])
	return nil
}
