// Package testbed starts the real parts that Drover's end-to-end tests run
// against: a throwaway PostgreSQL, local Kubernetes clusters, a Git server
// on loopback, an OCI registry and a Helm repository, and network namespaces for NAT and partitions. Nothing here
// is a mock; each part is the program a user would run, started from the
// machine's binaries, listening on 127.0.0.1 (or inside the test bed's own
// namespaces) only.
//
// Every test package that uses it calls Main from its TestMain:
//
//	func TestMain(m *testing.M) { testbed.Main(m) }
//
// Parts that are costly to start (the PostgreSQL server) are shared by the
// tests of one test binary and stopped by Main; parts a test asks for are
// its own and stop in its t.Cleanup. Every process also gets a
// parent-death signal, so none outlives a test binary that is killed.
//
// PostgreSQL: Postgres(t) returns the URL of a fresh database with the
// hub's migrations applied. The server comes from the machine's PostgreSQL
// binaries (see hub/pgserver), or from DROVER_TEST_DATABASE_URL when set.
//
// Git: GitServer(t) serves repositories made by the test over smart HTTP
// (git http-backend), optionally behind basic auth; Repo.Commit writes
// commits with fixed authors and dates, so they are reproducible.
//
// Registries: StartRegistry(t) runs CNCF Distribution's registry (built
// from the Go module proxy into the test bed cache by `make testbed`) over
// TLS from a private CA, optionally behind basic auth; PushChart pushes a
// chart as `helm push` does, PushArtifact an artifact as `flux push
// artifact` does, and TamperBlob corrupts a stored blob in place.
// StartHelmRepo(t) serves a Helm repository over HTTPS (or plain HTTP),
// its index.yaml made with Helm's own repo package; PackageChart packages
// a chart reproducibly.
//
// Networks: NewNetwork(t) makes a NAT router namespace linked to the root
// namespace, and AddEdge namespaces behind it (see Network). Their
// addresses are /30s of 198.18.0.0/15 only, the range RFC 2544 reserves for
// benchmarking in a lab and which is not routed outside one. A /30 is taken
// only if no route of the machine but the default one covers it and no
// address is in it, so the root namespace's uplink address and the edges'
// blackhole routes never hide a host the machine reaches otherwise; and
// while they exist they keep what the root namespace sends to the test
// bed's addresses from reaching the default gateway. No namespace the test
// bed makes has a default route. The router counts the connections started
// through it in each direction (Network.Connections).
//
// Logs: internal/testlog routes slog records to the test's log.
//
// A missing binary fails the test with how to install it; nothing is
// skipped.
package testbed
