// Command drover-agent runs in one cluster, dials out to the Drover hub and applies that cluster's assignment.
package main

import (
	"fmt"
	"os"

	"github.com/drover-dev/drover/internal/version"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("drover-agent", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "drover-agent", version.Version, "- not implemented yet")
	os.Exit(2)
}
