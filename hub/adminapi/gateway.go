package adminapi

import (
	"context"
	"net"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Gateway serves the AdminService as JSON under /api/v1/. It calls the
// service through an in-memory gRPC connection, so JSON requests pass
// through exactly the same interceptors (authentication, roles) as gRPC ones.
type Gateway struct {
	http.Handler
	srv  *grpc.Server
	conn *grpc.ClientConn
}

// NewGateway returns the JSON API for svc. Close releases it.
func NewGateway(ctx context.Context, svc droverv1.AdminServiceServer, auth TokenAuthenticator) (*Gateway, error) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(UnaryInterceptor(auth)))
	droverv1.RegisterAdminServiceServer(srv, svc)
	go func() { _ = srv.Serve(lis) }()

	conn, err := grpc.NewClient("passthrough:///admin",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		return nil, err
	}
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false, UseProtoNames: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}),
	)
	if err := droverv1.RegisterAdminServiceHandlerClient(ctx, mux, droverv1.NewAdminServiceClient(conn)); err != nil {
		conn.Close()
		srv.Stop()
		return nil, err
	}
	return &Gateway{Handler: limitBody(mux, 1<<20), srv: srv, conn: conn}, nil
}

// Close stops the in-memory connection.
func (g *Gateway) Close() {
	g.conn.Close()
	g.srv.Stop()
}

// limitBody refuses request bodies over max bytes before they are decoded.
func limitBody(h http.Handler, max int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, max)
		h.ServeHTTP(w, r)
	})
}
