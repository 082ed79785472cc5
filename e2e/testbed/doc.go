// Package testbed starts the real parts that Drover's end-to-end tests run
// against: a throwaway PostgreSQL, local Kubernetes clusters, and a Git
// server on loopback. Nothing here is a mock; each part is the program a
// user would run, started from the machine's binaries, listening on
// 127.0.0.1 only.
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
// Logs: Logger(t) routes slog records to the test's log.
//
// A missing binary fails the test with how to install it; nothing is
// skipped.
package testbed
