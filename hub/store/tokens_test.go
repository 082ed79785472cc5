package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestCreateJoinToken(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	req := &droverv1.CreateJoinTokenRequest{
		Ttl: "2h", Reusable: true, Labels: map[string]string{"env": "prod", "drover.dev/tier": "edge"},
		Description: "eu fleet",
	}
	token, jt, err := s.CreateJoinToken(ctx, req, "alice", testNow)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	if !strings.HasPrefix(token, jt.GetId()+".") {
		t.Errorf("token does not start with its id %q", jt.GetId())
	}
	if got, want := jt.GetExpiresAt().AsTime(), testNow.Add(2*time.Hour); !got.Equal(want) {
		t.Errorf("expires_at = %v, want %v", got, want)
	}
	list, err := s.ListJoinTokens(ctx)
	if err != nil {
		t.Fatalf("ListJoinTokens: %v", err)
	}
	if len(list) != 1 {
		t.Fatalf("ListJoinTokens returned %d tokens, want 1", len(list))
	}
	got := list[0]
	if got.GetId() != jt.GetId() || !got.GetReusable() || got.GetLabels()["env"] != "prod" ||
		got.GetDescription() != "eu fleet" || got.GetCreatedBy() != "alice" || got.GetUseCount() != 0 ||
		!got.GetCreatedAt().AsTime().Equal(testNow) || !got.GetExpiresAt().AsTime().Equal(testNow.Add(2*time.Hour)) {
		t.Errorf("listed token = %v, want %v", got, jt)
	}
	if err := s.DeleteJoinToken(ctx, jt.GetId()); err != nil {
		t.Fatalf("DeleteJoinToken: %v", err)
	}
	if err := s.DeleteJoinToken(ctx, jt.GetId()); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteJoinToken: %v, want ErrNotFound", err)
	}
	if _, err := s.CreateClusterWithJoinToken(ctx, token, "c1", "1", testNow); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("register with a deleted token: %v, want ErrTokenInvalid", err)
	}
}

func TestCreateJoinTokenDefaultTTL(t *testing.T) {
	s := newStore(t)
	_, jt, err := s.CreateJoinToken(context.Background(), &droverv1.CreateJoinTokenRequest{}, "", testNow)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	if got, want := jt.GetExpiresAt().AsTime(), testNow.Add(DefaultJoinTokenTTL); !got.Equal(want) {
		t.Errorf("expires_at = %v, want %v", got, want)
	}
}

func TestCreateJoinTokenValidation(t *testing.T) {
	s := newStore(t)
	tests := []struct {
		name      string
		req       *droverv1.CreateJoinTokenRequest
		wantField string
	}{
		{"bad ttl", &droverv1.CreateJoinTokenRequest{Ttl: "tomorrow"}, "ttl"},
		{"negative ttl", &droverv1.CreateJoinTokenRequest{Ttl: "-1h"}, "ttl"},
		{"bad label key", &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"bad key": "x"}}, `labels["bad key"]`},
		{"bad label value", &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"env": "not ok!"}}, `labels["env"]`},
		{"long description", &droverv1.CreateJoinTokenRequest{Description: strings.Repeat("x", 2000)}, "description"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := s.CreateJoinToken(context.Background(), tt.req, "", testNow)
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("err = %v, want a *ValidationError", err)
			}
			if ve.Field != tt.wantField {
				t.Errorf("field = %q, want %q (%v)", ve.Field, tt.wantField, err)
			}
		})
	}
	list, err := s.ListJoinTokens(context.Background())
	if err != nil || len(list) != 0 {
		t.Errorf("after refusals ListJoinTokens = %d tokens, %v; want none", len(list), err)
	}
}

func TestCreateClusterWithJoinToken(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	token, _, err := s.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{
		Labels: map[string]string{"env": "prod"},
	}, "alice", testNow)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	c, err := s.CreateClusterWithJoinToken(ctx, token, "eu-1", "serial-1", testNow.Add(time.Minute))
	if err != nil {
		t.Fatalf("CreateClusterWithJoinToken: %v", err)
	}
	if c.GetName() != "eu-1" || c.GetLabels()["env"] != "prod" || c.GetRevoked() ||
		!c.GetCreatedAt().AsTime().Equal(testNow.Add(time.Minute)) {
		t.Errorf("cluster = %v", c)
	}
	serial, revoked, err := s.ClusterCertSerial(ctx, "eu-1")
	if err != nil || serial != "serial-1" || revoked {
		t.Errorf("ClusterCertSerial = %q, %v, %v; want serial-1, false, nil", serial, revoked, err)
	}
	list, err := s.ListJoinTokens(ctx)
	if err != nil || len(list) != 1 || list[0].GetUseCount() != 1 {
		t.Fatalf("after use ListJoinTokens = %v, %v; want one token used once", list, err)
	}
	// The token is single-use.
	_, err = s.CreateClusterWithJoinToken(ctx, token, "eu-2", "serial-2", testNow.Add(time.Minute))
	var te *TokenError
	if !errors.As(err, &te) || te.Reason != TokenUsed {
		t.Errorf("second use: %v, want token used", err)
	}
}

func TestCreateClusterWithJoinTokenRefusals(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	valid, validTok, err := s.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Ttl: "1h"}, "", testNow)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	used, _, err := s.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{}, "", testNow)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	if _, err := s.CreateClusterWithJoinToken(ctx, used, "taken", "s0", testNow); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if _, err := s.RevokeCluster(ctx, "taken"); err != nil {
		t.Fatalf("RevokeCluster: %v", err)
	}
	id, secret, _ := strings.Cut(valid, ".")
	otherSecret := strings.Repeat("a", len(secret))
	if otherSecret == secret {
		otherSecret = strings.Repeat("b", len(secret))
	}

	tests := []struct {
		name       string
		token      string
		now        time.Time
		wantReason string
	}{
		{"expired", valid, testNow.Add(time.Hour), TokenExpired},
		{"used", used, testNow, TokenUsed},
		{"unknown id", "aaaaaaaa." + secret, testNow, TokenUnknown},
		{"wrong secret", id + "." + otherSecret, testNow, TokenUnknown},
		{"malformed empty", "", testNow, TokenMalformed},
		{"malformed no dot", id + secret, testNow, TokenMalformed},
		{"malformed short secret", id + "." + secret[:10], testNow, TokenMalformed},
		{"malformed alphabet", id + "." + strings.ToUpper(secret), testNow, TokenMalformed},
		{"malformed extra part", valid + ".x", testNow, TokenMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := s.CreateClusterWithJoinToken(ctx, tt.token, "new-cluster", "s1", tt.now)
			var te *TokenError
			if !errors.As(err, &te) || !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("err = %v (cluster %v), want a *TokenError", err, c)
			}
			if te.Reason != tt.wantReason {
				t.Errorf("reason = %q, want %q", te.Reason, tt.wantReason)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the secret", err)
			}
		})
	}

	t.Run("name taken by a revoked cluster", func(t *testing.T) {
		_, err := s.CreateClusterWithJoinToken(ctx, valid, "taken", "s2", testNow)
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("err = %v, want ErrConflict", err)
		}
		if serial, _, _ := s.ClusterCertSerial(ctx, "taken"); serial != "s0" {
			t.Errorf("cert serial of the existing cluster = %q, want s0", serial)
		}
	})
	t.Run("bad cluster name", func(t *testing.T) {
		_, err := s.CreateClusterWithJoinToken(ctx, valid, "Not_A_Name", "s2", testNow)
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "cluster_name" {
			t.Fatalf("err = %v, want a *ValidationError for cluster_name", err)
		}
	})

	// Nothing was created and the unused token is still unused.
	if _, err := s.GetCluster(ctx, "new-cluster"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetCluster(new-cluster) = %v, want ErrNotFound", err)
	}
	all, err := s.ListAllClusters(ctx)
	if err != nil || len(all) != 1 {
		t.Errorf("ListAllClusters = %v, %v; want only the first cluster", all, err)
	}
	list, err := s.ListJoinTokens(ctx)
	if err != nil {
		t.Fatalf("ListJoinTokens: %v", err)
	}
	for _, jt := range list {
		want := int32(1)
		if jt.GetId() == validTok.GetId() {
			want = 0
		}
		if jt.GetUseCount() != want {
			t.Errorf("token %s use_count = %d, want %d", jt.GetId(), jt.GetUseCount(), want)
		}
	}
	// And it still works.
	if _, err := s.CreateClusterWithJoinToken(ctx, valid, "new-cluster", "s3", testNow); err != nil {
		t.Errorf("valid token after refusals: %v", err)
	}
}

func TestReusableJoinToken(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	token, _, err := s.CreateJoinToken(ctx, &droverv1.CreateJoinTokenRequest{Reusable: true}, "", testNow)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	for _, name := range []string{"a", "b"} {
		if _, err := s.CreateClusterWithJoinToken(ctx, token, name, "s-"+name, testNow.Add(time.Minute)); err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
	}
	list, err := s.ListJoinTokens(ctx)
	if err != nil || len(list) != 1 || list[0].GetUseCount() != 2 {
		t.Fatalf("ListJoinTokens = %v, %v; want one token used twice", list, err)
	}
}

func TestAPITokens(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if n, err := s.CountAPITokens(ctx); err != nil || n != 0 {
		t.Fatalf("CountAPITokens = %d, %v; want 0", n, err)
	}
	first, ft, err := s.CreateFirstAPIToken(ctx, "admin", RoleAdmin, 0, testNow)
	if err != nil {
		t.Fatalf("CreateFirstAPIToken: %v", err)
	}
	if _, _, err := s.CreateFirstAPIToken(ctx, "admin2", RoleAdmin, 0, testNow); !errors.Is(err, ErrConflict) {
		t.Errorf("second CreateFirstAPIToken: %v, want ErrConflict", err)
	}
	viewer, vt, err := s.CreateAPIToken(ctx, "dashboard", RoleViewer, time.Hour, testNow)
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	if !vt.GetExpiresAt().AsTime().Equal(testNow.Add(time.Hour)) || vt.GetRole() != RoleViewer {
		t.Errorf("created token = %v", vt)
	}
	if _, _, err := s.CreateAPIToken(ctx, "dashboard", RoleAdmin, 0, testNow); !errors.Is(err, ErrConflict) {
		t.Errorf("duplicate name: %v, want ErrConflict", err)
	}
	if n, err := s.CountAPITokens(ctx); err != nil || n != 2 {
		t.Errorf("CountAPITokens = %d, %v; want 2", n, err)
	}

	got, err := s.AuthenticateAPIToken(ctx, first, testNow)
	if err != nil {
		t.Fatalf("AuthenticateAPIToken: %v", err)
	}
	if got.GetId() != ft.GetId() || got.GetName() != "admin" || got.GetRole() != RoleAdmin ||
		!got.GetLastUsedAt().AsTime().Equal(testNow) {
		t.Errorf("authenticated = %v", got)
	}
	// Within a minute last_used_at stays; after it, it moves.
	for _, tc := range []struct {
		at, wantLastUsed time.Time
	}{
		{testNow.Add(30 * time.Second), testNow},
		{testNow.Add(2 * time.Minute), testNow.Add(2 * time.Minute)},
	} {
		if _, err := s.AuthenticateAPIToken(ctx, first, tc.at); err != nil {
			t.Fatalf("AuthenticateAPIToken at %v: %v", tc.at, err)
		}
		list, err := s.ListAPITokens(ctx)
		if err != nil {
			t.Fatalf("ListAPITokens: %v", err)
		}
		for _, at := range list {
			if at.GetId() == ft.GetId() && !at.GetLastUsedAt().AsTime().Equal(tc.wantLastUsed) {
				t.Errorf("after use at %v: last_used_at = %v, want %v", tc.at, at.GetLastUsedAt().AsTime(), tc.wantLastUsed)
			}
		}
	}

	id, secret, _ := strings.Cut(viewer, ".")
	refusals := []struct {
		name   string
		token  string
		now    time.Time
		reason string
	}{
		{"expired", viewer, testNow.Add(time.Hour), TokenExpired},
		{"wrong secret", id + "." + strings.Repeat("z", len(secret)), testNow, TokenUnknown},
		{"unknown", "bbbbbbbb." + secret, testNow, TokenUnknown},
		{"malformed", "Bearer " + viewer, testNow, TokenMalformed},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.AuthenticateAPIToken(ctx, tt.token, tt.now)
			var te *TokenError
			if !errors.As(err, &te) || te.Reason != tt.reason {
				t.Errorf("err = %v, want token %s", err, tt.reason)
			}
		})
	}

	validation := []struct {
		name, tokenName, role string
		ttl                   time.Duration
		field                 string
	}{
		{"empty name", "", RoleAdmin, 0, "name"},
		{"reserved name", "hub", RoleAdmin, 0, "name"},
		{"bad role", "ci", "root", 0, "role"},
		{"negative ttl", "ci", RoleViewer, -time.Second, "ttl"},
	}
	for _, tt := range validation {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := s.CreateAPIToken(ctx, tt.tokenName, tt.role, tt.ttl, testNow)
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Errorf("err = %v, want a *ValidationError for %s", err, tt.field)
			}
		})
	}

	if err := s.DeleteAPIToken(ctx, vt.GetId()); err != nil {
		t.Fatalf("DeleteAPIToken: %v", err)
	}
	if _, err := s.AuthenticateAPIToken(ctx, viewer, testNow); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("deleted token: %v, want ErrTokenInvalid", err)
	}
	if err := s.DeleteAPIToken(ctx, vt.GetId()); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteAPIToken: %v, want ErrNotFound", err)
	}
}

func TestCreateFirstAPITokenRace(t *testing.T) {
	s := newStore(t)
	const racers = 8
	errs := make(chan error, racers)
	for i := 0; i < racers; i++ {
		go func() {
			_, _, err := s.CreateFirstAPIToken(context.Background(), "admin", RoleAdmin, 0, testNow)
			errs <- err
		}()
	}
	won := 0
	for i := 0; i < racers; i++ {
		switch err := <-errs; {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Errorf("racer: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d racers created the first token, want 1", won)
	}
}
