// Package adminapi serves Drover's AdminService, the operators' API, over
// gRPC and as JSON under /api/v1/. Every call carries a bearer API token;
// viewers may read, admins may also change, and every change is written to
// the event log with who made it.
package adminapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-dev/drover/hub/fleet"
	"github.com/drover-dev/drover/hub/spec"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Store is what the admin API needs from the database.
type Store interface {
	TokenAuthenticator
	ListClusters(ctx context.Context, sel labels.Selector, pageSize int, pageToken string) ([]*droverv1.Cluster, string, error)
	GetCluster(ctx context.Context, name string) (*droverv1.Cluster, error)
	GetStatuses(ctx context.Context, cluster string) ([]*droverv1.ApplicationStatus, error)
	ClusterStatusCounts(ctx context.Context, names []string) (map[string]*store.StatusCounts, error)
	UpdateClusterLabels(ctx context.Context, name string, set map[string]string, remove []string) (*droverv1.Cluster, error)
	RevokeCluster(ctx context.Context, name string) (*droverv1.Cluster, error)
	DeleteCluster(ctx context.Context, name string) error

	CreateJoinToken(ctx context.Context, req *droverv1.CreateJoinTokenRequest, createdBy string, now time.Time) (string, *droverv1.JoinToken, error)
	ListJoinTokens(ctx context.Context) ([]*droverv1.JoinToken, error)
	DeleteJoinToken(ctx context.Context, id string) error

	CreateApplication(ctx context.Context, app *droverv1.Application, actor string) (*droverv1.Application, error)
	UpdateApplication(ctx context.Context, app *droverv1.Application, actor string) (*droverv1.Application, error)
	GetApplication(ctx context.Context, name string) (*droverv1.Application, error)
	ListApplications(ctx context.Context) ([]*droverv1.Application, error)
	DeleteApplication(ctx context.Context, name, actor string) error
	ListReleases(ctx context.Context, app string, limit int) ([]*droverv1.Release, error)
	CurrentReleases(ctx context.Context) (map[string]*droverv1.Release, error)
	StatusesForApplication(ctx context.Context, app string) ([]*droverv1.ApplicationStatus, error)
	SourceError(ctx context.Context, app string) (string, error)

	SetRepository(ctx context.Context, url, authType, username string, sealed []byte, now time.Time) (*droverv1.Repository, error)
	ListRepositories(ctx context.Context) ([]*droverv1.Repository, error)
	DeleteRepository(ctx context.Context, url string) error

	CreateAPIToken(ctx context.Context, name, role string, ttl time.Duration, now time.Time) (string, *droverv1.APIToken, error)
	ListAPITokens(ctx context.Context) ([]*droverv1.APIToken, error)
	DeleteAPIToken(ctx context.Context, id string) error

	ReplicaStore

	AddEvent(ctx context.Context, e *droverv1.Event) error
	ListEvents(ctx context.Context, filter store.EventFilter, pageSize int, pageToken string) ([]*droverv1.Event, string, error)
}

// Controller is the hub's control logic as the admin API sees it: it is
// told of every change the admin API stores, after the store has it, and
// answers from the in-memory fleet.
type Controller interface {
	// ApplicationStored places an application as the store returned it
	// after a create or an update; the Controller keeps it, so it must not
	// change afterwards. ApplicationDeleted takes one out.
	ApplicationStored(ctx context.Context, app *droverv1.Application)
	ApplicationDeleted(ctx context.Context, name string)
	// ClusterChanged and RepositoryChanged reload the named object from
	// the store.
	ClusterChanged(ctx context.Context, name string)
	RepositoryChanged(ctx context.Context, url string)
	// Refresh resolves an application's ref now.
	Refresh(ctx context.Context, app string) (commit string, newRelease bool, err error)
	PlacedClusters(app string) []string
	AssignmentVersion(cluster string) string
	// Preview returns an application's part of a cluster's assignment at
	// commit ("" for the one the cluster is meant to run), credentials
	// included (fleet.Fleet.Preview).
	Preview(app, cluster, commit string) (*droverv1.AppAssignment, error)
}

// Hub is the serving side of the hub: its agent streams and its own health.
type Hub interface {
	// Disconnect closes a cluster's live stream.
	Disconnect(cluster string, reason error)
	Status(ctx context.Context) *droverv1.HubStatus
	// Replica is this replica's name; Members names the replicas it sees
	// in the gossip, itself included.
	Replica() string
	Members() []string
}

// Sealer encrypts secrets before they are stored.
type Sealer interface {
	Seal(plaintext, associatedData []byte) ([]byte, error)
}

// Server implements droverv1.AdminServiceServer.
type Server struct {
	droverv1.UnimplementedAdminServiceServer

	store          Store
	ctl            Controller
	hub            Hub
	sealer         Sealer
	log            *slog.Logger
	offlineTimeout time.Duration
	now            func() time.Time
}

var _ droverv1.AdminServiceServer = (*Server)(nil)

// New returns the admin API. A cluster counts as online while its last
// heartbeat is younger than offlineTimeout.
func New(st Store, ctl Controller, hub Hub, sealer Sealer, offlineTimeout time.Duration, logger *slog.Logger) *Server {
	return &Server{store: st, ctl: ctl, hub: hub, sealer: sealer, log: logger, offlineTimeout: offlineTimeout, now: time.Now}
}

// Maximum sizes of requests, beyond the gRPC message limit.
const (
	maxApplicationBytes = 256 << 10
	maxPageSize         = 1000
	defaultPageSize     = 100
)

func actor(ctx context.Context) string {
	if p, ok := PrincipalFrom(ctx); ok {
		return p.Name
	}
	return "unknown"
}

// toStatus maps store and validation errors to gRPC status errors. Internal
// details are logged, never returned.
func (s *Server) toStatus(op string, err error) error {
	var fe *spec.FieldError
	var ve *store.ValidationError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &fe):
		return status.Error(codes.InvalidArgument, fe.Error())
	case errors.As(err, &ve):
		return status.Error(codes.InvalidArgument, ve.Error())
	case errors.Is(err, store.ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: not found", op)
	case errors.Is(err, store.ErrConflict):
		return status.Errorf(codes.AlreadyExists, "%s: already exists", op)
	case errors.Is(err, context.Canceled):
		return status.FromContextError(err).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	s.log.Error(op, "err", err)
	return status.Errorf(codes.Unavailable, "%s failed; the hub logged why", op)
}

func (s *Server) audit(ctx context.Context, kind, cluster, app, msg string) {
	e := &droverv1.Event{Time: timestamppb.New(s.now()), Kind: kind, Actor: actor(ctx), Cluster: cluster, Application: app, Message: msg}
	if err := s.store.AddEvent(context.WithoutCancel(ctx), e); err != nil {
		s.log.Error("record audit event", "kind", kind, "err", err)
	}
}

func pageSize(n int32) (int, error) {
	switch {
	case n < 0 || n > maxPageSize:
		return 0, status.Errorf(codes.InvalidArgument, "page_size: must be between 0 and %d", maxPageSize)
	case n == 0:
		return defaultPageSize, nil
	}
	return int(n), nil
}

// decorate fills in what the store cannot know: whether the cluster is
// online by the hub's timeout, and the assignment version the hub holds.
func (s *Server) decorate(c *droverv1.Cluster, counts *store.StatusCounts) {
	c.Online = !c.GetRevoked() && c.GetLastSeen() != nil && s.now().Sub(c.GetLastSeen().AsTime()) < s.offlineTimeout
	if v := s.ctl.AssignmentVersion(c.GetName()); v != "" {
		c.AssignmentVersion = v
	}
	if counts != nil {
		c.HealthCounts = make(map[string]int32, len(counts.Health))
		for h, n := range counts.Health {
			c.HealthCounts[h.Name()] += n
		}
	}
}

// ListClusters lists clusters matching a label selector, a page at a time.
func (s *Server) ListClusters(ctx context.Context, req *droverv1.ListClustersRequest) (*droverv1.ListClustersResponse, error) {
	sel, err := labels.Parse(req.GetSelector())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "selector: %v", err)
	}
	n, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	cls, next, err := s.store.ListClusters(ctx, sel, n, req.GetPageToken())
	if err != nil {
		return nil, s.toStatus("list clusters", err)
	}
	names := make([]string, len(cls))
	for i, c := range cls {
		names[i] = c.GetName()
	}
	counts, err := s.store.ClusterStatusCounts(ctx, names)
	if err != nil {
		return nil, s.toStatus("list clusters", err)
	}
	for _, c := range cls {
		s.decorate(c, counts[c.GetName()])
	}
	return &droverv1.ListClustersResponse{Clusters: cls, NextPageToken: next}, nil
}

// GetCluster returns one cluster with the status of each application on it.
func (s *Server) GetCluster(ctx context.Context, req *droverv1.GetClusterRequest) (*droverv1.GetClusterResponse, error) {
	c, err := s.store.GetCluster(ctx, req.GetName())
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("cluster %q", req.GetName()), err)
	}
	sts, err := s.store.GetStatuses(ctx, c.GetName())
	if err != nil {
		return nil, s.toStatus("cluster statuses", err)
	}
	counts, err := s.store.ClusterStatusCounts(ctx, []string{c.GetName()})
	if err != nil {
		return nil, s.toStatus("cluster statuses", err)
	}
	s.decorate(c, counts[c.GetName()])
	return &droverv1.GetClusterResponse{Cluster: c, Applications: sts}, nil
}

// UpdateClusterLabels sets and removes labels; the cluster's assignment
// follows at once.
func (s *Server) UpdateClusterLabels(ctx context.Context, req *droverv1.UpdateClusterLabelsRequest) (*droverv1.UpdateClusterLabelsResponse, error) {
	for _, k := range req.GetRemove() {
		if _, ok := req.GetSet()[k]; ok {
			return nil, status.Errorf(codes.InvalidArgument, "remove: label %q is also being set", k)
		}
	}
	c, err := s.store.UpdateClusterLabels(ctx, req.GetName(), req.GetSet(), req.GetRemove())
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("cluster %q", req.GetName()), err)
	}
	s.ctl.ClusterChanged(ctx, c.GetName())
	s.audit(ctx, "cluster.labels_changed", c.GetName(), "", describeLabelChange(req.GetSet(), req.GetRemove()))
	s.decorate(c, nil)
	return &droverv1.UpdateClusterLabelsResponse{Cluster: c}, nil
}

func describeLabelChange(set map[string]string, remove []string) string {
	var parts []string
	for k, v := range set {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	for _, k := range remove {
		parts = append(parts, k+"-")
	}
	return "labels " + strings.Join(parts, " ")
}

// RevokeCluster revokes the cluster's certificate and closes its stream.
func (s *Server) RevokeCluster(ctx context.Context, req *droverv1.RevokeClusterRequest) (*droverv1.RevokeClusterResponse, error) {
	c, err := s.store.RevokeCluster(ctx, req.GetName())
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("cluster %q", req.GetName()), err)
	}
	s.hub.Disconnect(c.GetName(), errors.New("the cluster's certificate was revoked"))
	s.ctl.ClusterChanged(ctx, c.GetName())
	s.audit(ctx, "cluster.revoked", c.GetName(), "", "certificate revoked")
	s.decorate(c, nil)
	return &droverv1.RevokeClusterResponse{Cluster: c}, nil
}

// DeleteCluster forgets a cluster; its agent must register again.
func (s *Server) DeleteCluster(ctx context.Context, req *droverv1.DeleteClusterRequest) (*droverv1.DeleteClusterResponse, error) {
	if err := s.store.DeleteCluster(ctx, req.GetName()); err != nil {
		return nil, s.toStatus(fmt.Sprintf("cluster %q", req.GetName()), err)
	}
	s.hub.Disconnect(req.GetName(), errors.New("the cluster was deleted"))
	s.ctl.ClusterChanged(ctx, req.GetName())
	s.audit(ctx, "cluster.deleted", req.GetName(), "", "cluster deleted")
	return &droverv1.DeleteClusterResponse{}, nil
}

// CreateJoinToken makes a join token and returns its secret once.
func (s *Server) CreateJoinToken(ctx context.Context, req *droverv1.CreateJoinTokenRequest) (*droverv1.CreateJoinTokenResponse, error) {
	if req.GetTtl() != "" {
		d, err := time.ParseDuration(req.GetTtl())
		if err != nil || d <= 0 || d > 365*24*time.Hour {
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %q is not a positive duration of at most 8760h (e.g. 24h)", req.GetTtl())
		}
	}
	if len(req.GetDescription()) > 256 {
		return nil, status.Error(codes.InvalidArgument, "description: at most 256 characters")
	}
	tok, jt, err := s.store.CreateJoinToken(ctx, req, actor(ctx), s.now())
	if err != nil {
		return nil, s.toStatus("create join token", err)
	}
	s.audit(ctx, "join_token.created", "", "", fmt.Sprintf("join token %s created (reusable=%t, expires %s)", jt.GetId(), jt.GetReusable(), jt.GetExpiresAt().AsTime().Format(time.RFC3339)))
	return &droverv1.CreateJoinTokenResponse{Token: tok, JoinToken: jt}, nil
}

// ListJoinTokens lists join tokens without their secrets.
func (s *Server) ListJoinTokens(ctx context.Context, _ *droverv1.ListJoinTokensRequest) (*droverv1.ListJoinTokensResponse, error) {
	ts, err := s.store.ListJoinTokens(ctx)
	if err != nil {
		return nil, s.toStatus("list join tokens", err)
	}
	return &droverv1.ListJoinTokensResponse{JoinTokens: ts}, nil
}

// DeleteJoinToken deletes a join token.
func (s *Server) DeleteJoinToken(ctx context.Context, req *droverv1.DeleteJoinTokenRequest) (*droverv1.DeleteJoinTokenResponse, error) {
	if err := s.store.DeleteJoinToken(ctx, req.GetId()); err != nil {
		return nil, s.toStatus(fmt.Sprintf("join token %q", req.GetId()), err)
	}
	s.audit(ctx, "join_token.deleted", "", "", fmt.Sprintf("join token %s deleted", req.GetId()))
	return &droverv1.DeleteJoinTokenResponse{}, nil
}

func validateApplication(app *droverv1.Application) error {
	if app == nil {
		return status.Error(codes.InvalidArgument, "application: required")
	}
	if n := proto.Size(app); n > maxApplicationBytes {
		return status.Errorf(codes.InvalidArgument, "application: %d bytes, at most %d", n, maxApplicationBytes)
	}
	if err := spec.ValidateName(app.GetName()); err != nil {
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if err := spec.ValidateSpec(app.GetSpec()); err != nil {
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	return nil
}

// CreateApplication stores a new application and places it.
func (s *Server) CreateApplication(ctx context.Context, req *droverv1.CreateApplicationRequest) (*droverv1.CreateApplicationResponse, error) {
	if err := validateApplication(req.GetApplication()); err != nil {
		return nil, err
	}
	app, err := s.store.CreateApplication(ctx, req.GetApplication(), actor(ctx))
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("application %q", req.GetApplication().GetName()), err)
	}
	s.ctl.ApplicationStored(ctx, app)
	return &droverv1.CreateApplicationResponse{Application: app}, nil
}

// UpdateApplication replaces an application's spec.
func (s *Server) UpdateApplication(ctx context.Context, req *droverv1.UpdateApplicationRequest) (*droverv1.UpdateApplicationResponse, error) {
	if err := validateApplication(req.GetApplication()); err != nil {
		return nil, err
	}
	app, err := s.store.UpdateApplication(ctx, req.GetApplication(), actor(ctx))
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("application %q", req.GetApplication().GetName()), err)
	}
	s.ctl.ApplicationStored(ctx, app)
	return &droverv1.UpdateApplicationResponse{Application: app}, nil
}

// GetApplication returns an application with its releases and its status on
// every placed cluster.
func (s *Server) GetApplication(ctx context.Context, req *droverv1.GetApplicationRequest) (*droverv1.GetApplicationResponse, error) {
	app, err := s.store.GetApplication(ctx, req.GetName())
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("application %q", req.GetName()), err)
	}
	rels, err := s.store.ListReleases(ctx, app.GetName(), 20)
	if err != nil {
		return nil, s.toStatus("list releases", err)
	}
	sts, err := s.store.StatusesForApplication(ctx, app.GetName())
	if err != nil {
		return nil, s.toStatus("application statuses", err)
	}
	placed := s.ctl.PlacedClusters(app.GetName())
	// Statuses of clusters the application has left are history, not state.
	in := make(map[string]bool, len(placed))
	for _, c := range placed {
		in[c] = true
	}
	kept := sts[:0]
	for _, st := range sts {
		if in[st.GetCluster()] {
			kept = append(kept, st)
		}
	}
	srcErr, err := s.store.SourceError(ctx, app.GetName())
	if err != nil {
		return nil, s.toStatus("get application", err)
	}
	return &droverv1.GetApplicationResponse{
		Application:    app,
		Releases:       rels,
		Statuses:       kept,
		PlacedClusters: placed,
		SourceError:    srcErr,
	}, nil
}

// ListApplications lists applications with their fleet-wide state.
func (s *Server) ListApplications(ctx context.Context, _ *droverv1.ListApplicationsRequest) (*droverv1.ListApplicationsResponse, error) {
	apps, err := s.store.ListApplications(ctx)
	if err != nil {
		return nil, s.toStatus("list applications", err)
	}
	rels, err := s.store.CurrentReleases(ctx)
	if err != nil {
		return nil, s.toStatus("list releases", err)
	}
	out := make([]*droverv1.ApplicationSummary, 0, len(apps))
	for _, a := range apps {
		sum := &droverv1.ApplicationSummary{
			Application:  a,
			Commit:       rels[a.GetName()].GetCommit(),
			HealthCounts: map[string]int32{},
			SyncCounts:   map[string]int32{},
		}
		placed := s.ctl.PlacedClusters(a.GetName())
		sum.PlacedClusters = int32(len(placed))
		if len(placed) > 0 {
			sts, err := s.store.StatusesForApplication(ctx, a.GetName())
			if err != nil {
				return nil, s.toStatus("application statuses", err)
			}
			in := make(map[string]bool, len(placed))
			for _, c := range placed {
				in[c] = true
			}
			for _, st := range sts {
				if in[st.GetCluster()] {
					sum.HealthCounts[st.GetHealth().Name()]++
					sum.SyncCounts[st.GetSync().Name()]++
				}
			}
		}
		out = append(out, sum)
	}
	return &droverv1.ListApplicationsResponse{Applications: out}, nil
}

// DeleteApplication deletes an application; agents prune it (when its
// policy prunes) once their next assignment no longer lists it.
func (s *Server) DeleteApplication(ctx context.Context, req *droverv1.DeleteApplicationRequest) (*droverv1.DeleteApplicationResponse, error) {
	if err := s.store.DeleteApplication(ctx, req.GetName(), actor(ctx)); err != nil {
		return nil, s.toStatus(fmt.Sprintf("application %q", req.GetName()), err)
	}
	s.ctl.ApplicationDeleted(ctx, req.GetName())
	return &droverv1.DeleteApplicationResponse{}, nil
}

// RefreshApplication resolves the application's ref now.
func (s *Server) RefreshApplication(ctx context.Context, req *droverv1.RefreshApplicationRequest) (*droverv1.RefreshApplicationResponse, error) {
	if _, err := s.store.GetApplication(ctx, req.GetName()); err != nil {
		return nil, s.toStatus(fmt.Sprintf("application %q", req.GetName()), err)
	}
	commit, created, err := s.ctl.Refresh(ctx, req.GetName())
	if err != nil {
		// The error is already free of credentials (the Git watcher
		// redacts URLs); it is the user's to see.
		return nil, status.Errorf(codes.FailedPrecondition, "resolve the source of %q: %v", req.GetName(), err)
	}
	s.audit(ctx, "application.refreshed", "", req.GetName(), fmt.Sprintf("ref resolved to %s", commit))
	return &droverv1.RefreshApplicationResponse{Commit: commit, NewRelease: created}, nil
}

// SetRepositoryCredentials seals and stores credentials for a repository.
func (s *Server) SetRepositoryCredentials(ctx context.Context, req *droverv1.SetRepositoryCredentialsRequest) (*droverv1.SetRepositoryCredentialsResponse, error) {
	url := req.GetUrl()
	if err := spec.ValidateRepoURL(url); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "url: %v", err)
	}
	c := req.GetCredentials()
	var authType string
	switch {
	case c.GetSshPrivateKey() != "" && (c.GetUsername() != "" || c.GetPassword() != ""):
		return nil, status.Error(codes.InvalidArgument, "credentials: give either username/password or an SSH key, not both")
	case c.GetSshPrivateKey() != "" && c.GetCaPem() != "":
		return nil, status.Error(codes.InvalidArgument, "credentials.ca_pem: a CA bundle is for HTTPS (Helm repositories, OCI registries); SSH verifies hosts by ssh_known_hosts")
	case c.GetSshPrivateKey() != "":
		if c.GetSshKnownHosts() == "" {
			return nil, status.Error(codes.InvalidArgument, "credentials.ssh_known_hosts: required with an SSH key, so the host is verified")
		}
		authType = store.AuthSSH
	case c.GetPassword() != "":
		authType = store.AuthBasic
	case c.GetCaPem() != "" && c.GetUsername() == "":
		authType = store.AuthCA
	default:
		return nil, status.Error(codes.InvalidArgument, "credentials: a password/token, an SSH private key or a CA bundle (ca_pem) is required")
	}
	if msg := checkCAPEM(c.GetCaPem()); msg != "" {
		return nil, status.Errorf(codes.InvalidArgument, "credentials.ca_pem: %s", msg)
	}
	plain, err := proto.Marshal(c)
	if err != nil {
		return nil, s.toStatus("encode credentials", err)
	}
	sealed, err := s.sealer.Seal(plain, []byte(url))
	if err != nil {
		return nil, s.toStatus("seal credentials", err)
	}
	repo, err := s.store.SetRepository(ctx, url, authType, c.GetUsername(), sealed, s.now())
	if err != nil {
		return nil, s.toStatus("store credentials", err)
	}
	s.ctl.RepositoryChanged(ctx, url)
	s.audit(ctx, "repository.credentials_set", "", "", fmt.Sprintf("%s credentials set for %s", authType, url))
	return &droverv1.SetRepositoryCredentialsResponse{Repository: repo}, nil
}

// maxCAPEMBytes bounds a repository's CA bundle: a few certificates.
const maxCAPEMBytes = 1 << 20

// checkCAPEM returns why pemText is not a bundle of PEM certificates, or
// "" (also for none). Hub and agents trust exactly these certificates for
// the source's TLS, besides the system's.
func checkCAPEM(pemText string) string {
	if pemText == "" {
		return ""
	}
	if len(pemText) > maxCAPEMBytes {
		return fmt.Sprintf("larger than %d bytes", maxCAPEMBytes)
	}
	rest, n := []byte(pemText), 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Sprintf("holds a PEM %q block; only CERTIFICATE blocks belong in a CA bundle", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Sprintf("certificate %d does not parse: %v", n+1, err)
		}
		n++
	}
	if n == 0 || len(bytes.TrimSpace(rest)) > 0 {
		return "not a bundle of PEM certificates"
	}
	return ""
}

// ListRepositories lists repositories with credentials, never the secrets.
func (s *Server) ListRepositories(ctx context.Context, _ *droverv1.ListRepositoriesRequest) (*droverv1.ListRepositoriesResponse, error) {
	rs, err := s.store.ListRepositories(ctx)
	if err != nil {
		return nil, s.toStatus("list repositories", err)
	}
	return &droverv1.ListRepositoriesResponse{Repositories: rs}, nil
}

// DeleteRepositoryCredentials forgets a repository's credentials.
func (s *Server) DeleteRepositoryCredentials(ctx context.Context, req *droverv1.DeleteRepositoryCredentialsRequest) (*droverv1.DeleteRepositoryCredentialsResponse, error) {
	if err := s.store.DeleteRepository(ctx, req.GetUrl()); err != nil {
		return nil, s.toStatus(fmt.Sprintf("repository %q", req.GetUrl()), err)
	}
	s.ctl.RepositoryChanged(ctx, req.GetUrl())
	s.audit(ctx, "repository.credentials_deleted", "", "", "credentials deleted for "+req.GetUrl())
	return &droverv1.DeleteRepositoryCredentialsResponse{}, nil
}

// CreateAPIToken makes an API token and returns its secret once.
func (s *Server) CreateAPIToken(ctx context.Context, req *droverv1.CreateAPITokenRequest) (*droverv1.CreateAPITokenResponse, error) {
	if req.GetRole() != RoleAdmin && req.GetRole() != RoleViewer {
		return nil, status.Errorf(codes.InvalidArgument, "role: %q is not %q or %q", req.GetRole(), RoleAdmin, RoleViewer)
	}
	if n := req.GetName(); n == "" || len(n) > 63 {
		return nil, status.Error(codes.InvalidArgument, "name: required, at most 63 characters")
	}
	var ttl time.Duration
	if req.GetTtl() != "" {
		d, err := time.ParseDuration(req.GetTtl())
		if err != nil || d <= 0 {
			return nil, status.Errorf(codes.InvalidArgument, "ttl: %q is not a positive duration (e.g. 720h)", req.GetTtl())
		}
		ttl = d
	}
	tok, t, err := s.store.CreateAPIToken(ctx, req.GetName(), req.GetRole(), ttl, s.now())
	if err != nil {
		return nil, s.toStatus("create API token", err)
	}
	s.audit(ctx, "api_token.created", "", "", fmt.Sprintf("API token %s (%s, role %s) created", t.GetId(), t.GetName(), t.GetRole()))
	return &droverv1.CreateAPITokenResponse{Token: tok, ApiToken: t}, nil
}

// ListAPITokens lists API tokens without their secrets.
func (s *Server) ListAPITokens(ctx context.Context, _ *droverv1.ListAPITokensRequest) (*droverv1.ListAPITokensResponse, error) {
	ts, err := s.store.ListAPITokens(ctx)
	if err != nil {
		return nil, s.toStatus("list API tokens", err)
	}
	return &droverv1.ListAPITokensResponse{ApiTokens: ts}, nil
}

// DeleteAPIToken deletes an API token.
func (s *Server) DeleteAPIToken(ctx context.Context, req *droverv1.DeleteAPITokenRequest) (*droverv1.DeleteAPITokenResponse, error) {
	if err := s.store.DeleteAPIToken(ctx, req.GetId()); err != nil {
		return nil, s.toStatus(fmt.Sprintf("API token %q", req.GetId()), err)
	}
	s.audit(ctx, "api_token.deleted", "", "", fmt.Sprintf("API token %s deleted", req.GetId()))
	return &droverv1.DeleteAPITokenResponse{}, nil
}

// ListEvents lists the event history, newest first.
func (s *Server) ListEvents(ctx context.Context, req *droverv1.ListEventsRequest) (*droverv1.ListEventsResponse, error) {
	n, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	evs, next, err := s.store.ListEvents(ctx, store.EventFilter{
		Cluster: req.GetCluster(), Application: req.GetApplication(), KindPrefix: req.GetKind(),
	}, n, req.GetPageToken())
	if err != nil {
		return nil, s.toStatus("list events", err)
	}
	return &droverv1.ListEventsResponse{Events: evs, NextPageToken: next}, nil
}

// GetHubStatus reports the hub's own health.
func (s *Server) GetHubStatus(ctx context.Context, _ *droverv1.GetHubStatusRequest) (*droverv1.GetHubStatusResponse, error) {
	return &droverv1.GetHubStatusResponse{Status: s.hub.Status(ctx)}, nil
}

// PreviewAssignment returns an application's part of a cluster's
// assignment, without credentials (only a CA bundle stays), and the cluster's facts, for
// `droverctl render`.
func (s *Server) PreviewAssignment(ctx context.Context, req *droverv1.PreviewAssignmentRequest) (*droverv1.PreviewAssignmentResponse, error) {
	if req.GetApplication() == "" || req.GetCluster() == "" {
		return nil, status.Error(codes.InvalidArgument, "application and cluster: both required")
	}
	if c := req.GetCommit(); c != "" {
		if err := spec.ValidateRevision(c); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "commit: %v", err)
		}
	}
	c, err := s.store.GetCluster(ctx, req.GetCluster())
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("cluster %q", req.GetCluster()), err)
	}
	aa, err := s.ctl.Preview(req.GetApplication(), req.GetCluster(), req.GetCommit())
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "application %q: not found", req.GetApplication())
	case errors.Is(err, fleet.ErrNotPlaced), errors.Is(err, fleet.ErrNoCommit):
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	case err != nil:
		return nil, s.toStatus("preview assignment", err)
	}
	// The CA bundle is no secret, and droverctl needs it to reach a
	// source behind a private CA; everything else stays on the hub.
	if ca := aa.GetCredentials().GetCaPem(); ca != "" {
		aa.Credentials = &droverv1.RepoCredentials{CaPem: ca}
	} else {
		aa.Credentials = nil
	}
	return &droverv1.PreviewAssignmentResponse{Assignment: aa, Facts: c.GetFacts()}, nil
}
