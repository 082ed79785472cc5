package adminapi

import (
	"context"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Roles of API tokens.
const (
	RoleAdmin  = "admin"
	RoleViewer = "viewer"
)

// readOnly lists the methods a viewer may call. Every other AdminService
// method needs the admin role, so a method added later is admin-only until
// someone decides otherwise.
var readOnly = map[string]bool{
	droverv1.AdminService_ListClusters_FullMethodName:     true,
	droverv1.AdminService_GetCluster_FullMethodName:       true,
	droverv1.AdminService_ListJoinTokens_FullMethodName:   true,
	droverv1.AdminService_GetApplication_FullMethodName:   true,
	droverv1.AdminService_ListApplications_FullMethodName: true,
	droverv1.AdminService_ListRepositories_FullMethodName: true,
	droverv1.AdminService_ListEvents_FullMethodName:       true,
	droverv1.AdminService_GetHubStatus_FullMethodName:     true,
	droverv1.AdminService_GetRollout_FullMethodName:       true,
	droverv1.AdminService_ListReplicas_FullMethodName:     true,
	// Shows what GetApplication shows (the spec's values and overrides),
	// resolved for one cluster, and never credentials.
	droverv1.AdminService_PreviewAssignment_FullMethodName: true,
}

// Principal is the caller of an admin request.
type Principal struct {
	// Name is the API token's name; it is the actor in audit entries.
	Name string
	Role string
}

type principalKey struct{}

// PrincipalFrom returns the authenticated caller of ctx.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// WithPrincipal returns ctx carrying p; for callers inside the hub (the
// dashboard) that authenticate by other means.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// TokenAuthenticator checks API tokens.
type TokenAuthenticator interface {
	AuthenticateAPIToken(ctx context.Context, token string, now time.Time) (*droverv1.APIToken, error)
}

// Authenticate returns the principal a bearer token stands for.
func Authenticate(ctx context.Context, auth TokenAuthenticator, token string) (Principal, error) {
	if token == "" {
		return Principal{}, status.Error(codes.Unauthenticated, "missing bearer token: log in with `droverctl login` or send 'Authorization: Bearer TOKEN'")
	}
	t, err := auth.AuthenticateAPIToken(ctx, token, time.Now())
	switch {
	case errors.Is(err, store.ErrTokenInvalid):
		return Principal{}, status.Errorf(codes.Unauthenticated, "bearer token refused: %v", err)
	case err != nil:
		return Principal{}, status.Error(codes.Unavailable, "could not check the token; try again")
	}
	return Principal{Name: t.GetName(), Role: t.GetRole()}, nil
}

// UnaryInterceptor authenticates AdminService calls by their bearer token
// and enforces roles. Calls to other services pass through untouched.
func UnaryInterceptor(auth TokenAuthenticator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !strings.HasPrefix(info.FullMethod, "/"+droverv1.AdminService_ServiceDesc.ServiceName+"/") {
			return handler(ctx, req)
		}
		p, err := Authenticate(ctx, auth, bearer(ctx))
		if err != nil {
			return nil, err
		}
		if err := authorize(p, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(WithPrincipal(ctx, p), req)
	}
}

func authorize(p Principal, method string) error {
	switch {
	case p.Role == RoleAdmin:
		return nil
	case p.Role == RoleViewer && readOnly[method]:
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "role %q may not call %s", p.Role, method[strings.LastIndex(method, "/")+1:])
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
	}
	return ""
}
