package ctl

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/internal/atomicfile"
)

// globals are the flags every command accepts. Each starts from its
// environment variable, so a flag wins over the environment, which wins
// over the config file.
type globals struct {
	server     string
	token      string
	configPath string
}

func globalsFromEnv(getenv func(string) string) globals {
	return globals{server: getenv("DROVER_SERVER"), token: getenv("DROVER_TOKEN"), configPath: getenv("DROVER_CONFIG")}
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "the hub's HTTP address, e.g. http://127.0.0.1:8080 (env DROVER_SERVER)")
	fs.StringVar(&g.token, "token", g.token, "API token (env DROVER_TOKEN); prefer 'droverctl login'")
	fs.StringVar(&g.configPath, "config", g.configPath, "config file (env DROVER_CONFIG)")
}

func isGlobalFlag(name string) bool {
	return name == "server" || name == "token" || name == "config"
}

// config is what `droverctl login` saves.
type config struct {
	Server string `json:"server,omitempty"`
	Token  string `json:"token,omitempty"`
}

// configPath is --config, else $XDG_CONFIG_HOME/drover/config.yaml, else
// $HOME/.config/drover/config.yaml.
func (x *invocation) configPath() (string, error) {
	if x.globals.configPath != "" {
		return x.globals.configPath, nil
	}
	if d := x.cli.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "drover", "config.yaml"), nil
	}
	if h := x.cli.Getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "drover", "config.yaml"), nil
	}
	return "", errors.New("no config file: set HOME, XDG_CONFIG_HOME or --config")
}

// loadConfig reads the config file; a missing one is an empty config.
func loadConfig(path string) (config, error) {
	var cfg config
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// saveConfig writes cfg to path, readable by its owner alone. Directories
// it has to create are the owner's alone; an existing directory is left as
// it is, because others may share it (the file's own mode keeps the token
// private there). It writes a temporary file and renames it, so a crash
// never leaves half a config (or a token in a file with looser
// permissions).
func saveConfig(path string, cfg config) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create config directory: %w", err)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// parseServer checks a hub URL: http or https, a host, no credentials
// (the token is sent as a header; URLs end up in error messages).
func parseServer(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("no hub given: run droverctl login --server URL, or pass --server")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want http://HOST:PORT or https://HOST:PORT", raw)
	}
	if u.User != nil {
		return nil, errors.New("--server: must not contain credentials; give the token with --token or droverctl login")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--server %q: want http://HOST:PORT or https://HOST:PORT", raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// sameServer reports whether two hub URLs name the same hub, however
// they are spelt ("http://h:8080/" and "http://h:8080").
func sameServer(a, b string) bool {
	ua, err := parseServer(a)
	if err != nil {
		return false
	}
	ub, err := parseServer(b)
	return err == nil && ua.String() == ub.String()
}

// client returns a client of the hub the flags, the environment or the
// config file name, with the token they give.
func (x *invocation) client() (*client, error) {
	server, token := x.globals.server, x.globals.token
	if server == "" || token == "" {
		path, err := x.configPath()
		if err != nil {
			return nil, err
		}
		cfg, err := loadConfig(path)
		if err != nil {
			return nil, err
		}
		// The saved token belongs to the saved server: never send it to
		// another hub named by --server.
		if server == "" || sameServer(server, cfg.Server) {
			server = cfg.Server
			if token == "" {
				token = cfg.Token
			}
		}
	}
	u, err := parseServer(server)
	if err != nil {
		return nil, err
	}
	return newClient(u, token, x.cli.HTTPClient), nil
}
