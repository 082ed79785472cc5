// Command drover-hub runs Drover's hub: the agent endpoint, admin API, dashboard, Git watcher and rollout engine.
package main

import (
	"fmt"
	"os"

	"github.com/drover-dev/drover/internal/version"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("drover-hub", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "drover-hub", version.Version, "- not implemented yet")
	os.Exit(2)
}
