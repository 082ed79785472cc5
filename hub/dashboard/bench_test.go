package dashboard_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/dashboard"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// BenchmarkOverview10000 renders the fleet overview of 10,000 clusters
// running 50 applications (5 per cluster, 50,000 statuses), all inserted
// through the store. Budgets: under 300 ms and 300 KB of HTML per render, 60 KB of it sent
// compressed.
func BenchmarkOverview10000(b *testing.B) {
	const clusters, apps, appsPerCluster = 10000, 50, 5
	ctx := context.Background()
	st, err := store.Open(ctx, testbed.Postgres(b), testlog.New(b))
	must(b, err)
	b.Cleanup(st.Close)
	now := time.Now()

	regions := []string{"eu", "us", "ap", "sa"}
	tokens := make([]string, len(regions))
	for i, r := range regions {
		tokens[i], _, err = st.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Reusable: true, Labels: map[string]string{"region": r, "env": "prod"}}, "bench", now)
		must(b, err)
	}
	var g errgroup.Group
	g.SetLimit(8)
	for i := range clusters {
		g.Go(func() error {
			_, err := st.CreateClusterWithJoinToken(ctx, tokens[i%len(tokens)], fmt.Sprintf("cluster-%05d", i), fmt.Sprintf("s%d", i), now)
			return err
		})
	}
	must(b, g.Wait())
	for a := range apps {
		_, err := st.CreateApplication(ctx, app(fmt.Sprintf("app-%02d", a), "https://github.com/acme/fleet.git", "apps", map[string]string{"env": "prod"}), "bench")
		must(b, err)
	}
	names := make([]string, 0, clusters)
	var sts []*droverv1.ApplicationStatus
	obs := timestamppb.New(now)
	for i := range clusters {
		name := fmt.Sprintf("cluster-%05d", i)
		names = append(names, name)
		for j := range appsPerCluster {
			h := droverv1.Health_HEALTH_HEALTHY
			if (i+j)%97 == 0 {
				h = droverv1.Health_HEALTH_DEGRADED
			}
			sts = append(sts, &droverv1.ApplicationStatus{Cluster: name, Application: fmt.Sprintf("app-%02d", (i+j)%apps), Commit: "abc", Health: h,
				Sync: droverv1.SyncState_SYNC_STATE_SYNCED, ObservedAt: obs})
		}
	}
	for lo := 0; lo < len(sts); lo += 5000 {
		must(b, st.WriteStatuses(ctx, sts[lo:min(lo+5000, len(sts))]))
	}
	// Nine in ten clusters are online.
	online := names[:0:0]
	for i, n := range names {
		if i%10 != 0 {
			online = append(online, n)
		}
	}
	must(b, st.TouchLastSeen(ctx, online, now))
	tok, _, err := st.CreateAPIToken(ctx, "bench", adminapi.RoleViewer, 0, now)
	must(b, err)

	dash, err := dashboard.New(dashboard.Config{Admin: adminapi.New(st, &fakeHub{}, &fakeHub{}, nil, time.Minute, testlog.New(b)), Store: st})
	must(b, err)
	srv := httptest.NewServer(dash)
	b.Cleanup(srv.Close)
	cookie := loginCookie(b, srv.URL, tok)

	for _, tc := range []struct{ name, query string }{
		{"all", "/"},
		{"grouped", "/?group=region"},
		{"selector", "/?" + url.Values{"selector": {"region in (eu,us)"}}.Encode()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var sent []byte
			for b.Loop() {
				req := httptest.NewRequest("GET", tc.query, nil)
				req.AddCookie(cookie)
				req.Header.Set("Accept-Encoding", "gzip")
				rec := httptest.NewRecorder()
				dash.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || rec.Header().Get("Content-Encoding") != "gzip" {
					b.Fatalf("GET %s = %d, Content-Encoding %q", tc.query, rec.Code, rec.Header().Get("Content-Encoding"))
				}
				sent = rec.Body.Bytes()
			}
			zr, err := gzip.NewReader(bytes.NewReader(sent))
			must(b, err)
			html, err := io.ReadAll(zr)
			must(b, err)
			b.ReportMetric(float64(len(html)), "html-bytes")
			b.ReportMetric(float64(len(sent)), "sent-bytes")
		})
	}
}

// loginCookie signs in through the form and returns the session cookie.
func loginCookie(b *testing.B, base, token string) *http.Cookie {
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(base + "/login")
	must(b, err)
	defer resp.Body.Close()
	var nonce *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "drover_login" {
			nonce = c
		}
	}
	req, err := http.NewRequest("POST", base+"/login", strings.NewReader(url.Values{"token": {token}, "csrf": {nonce.Value}}.Encode()))
	must(b, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(nonce)
	resp2, err := client.Do(req)
	must(b, err)
	defer resp2.Body.Close()
	for _, c := range resp2.Cookies() {
		if c.Name == "drover_session" && c.Value != "" {
			return c
		}
	}
	b.Fatalf("login: %d, no session cookie", resp2.StatusCode)
	return nil
}
