// Command droverctl is the operators' CLI over Drover's admin API.
package main

import (
	"fmt"
	"os"

	"github.com/drover-dev/drover/internal/version"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("droverctl", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "droverctl", version.Version, "- not implemented yet")
	os.Exit(2)
}
