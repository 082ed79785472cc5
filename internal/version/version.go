// Package version holds the version of Drover's binaries, set at link time
// by the Makefile (-X github.com/drover-dev/drover/internal/version.Version=...).
package version

// Version is the release of this build; "dev" when built without the Makefile.
var Version = "dev"
