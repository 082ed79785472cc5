package spec

import (
	"testing"

	"github.com/drover-dev/drover/internal/gitremote"
)

// The hub accepts exactly the repository URLs every agent can fetch
// (gitremote.Parse is the agents' check), less those carrying credentials,
// which the hub keeps out of URLs because URLs are shown and logged.
func TestRepoURLsAgreeWithAgents(t *testing.T) {
	for _, u := range []string{
		"https://127.0.0.1/org/app.git",
		"http://127.0.0.1:3000/org/app.git",
		"ssh://git@127.0.0.1:2222/org/app.git",
		"ssh://git@[::1]/org/app.git",
		"git@localhost:org/app.git",
		"localhost:org/app.git",
		"git://127.0.0.1/org/app.git",
		"file:///srv/git/app.git",
		"ftp://127.0.0.1/app.git",
		"ext::sh -c x",
		"ext::evil",
		"/srv/git/app.git",
		"./app.git",
		"-oProxyCommand=x:org/app.git",
		"ssh://-oProxyCommand=x/app.git",
		"git@localhost:-u/app.git",
		"git@localhost:",
		"https:///app.git",
		"https://127.0.0.1/a b.git",
		"https://127.0.0.1/a\u00a0b.git",
		"https://127.0.0.1:bad/app.git",
	} {
		_, agentErr := gitremote.Parse(u)
		hubErr := ValidateRepoURL(u)
		if (agentErr == nil) != (hubErr == nil) {
			t.Errorf("%q: agents say %v, the hub says %v; they must agree", u, agentErr, hubErr)
		}
	}
	for _, u := range []string{"https://user:token@127.0.0.1/app.git", "https://token@127.0.0.1/app.git", "ssh://git:pw@127.0.0.1/app.git"} {
		if ValidateRepoURL(u) == nil {
			t.Errorf("the hub accepted %q, which carries credentials", u)
		}
	}
}
