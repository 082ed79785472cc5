package ctl

import (
	"bytes"
	"flag"
	"io"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestParseInterleavedFlags(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		wantPos  []string
		wantOut  string
		wantSrv  string
		wantFail bool
	}{
		{args: []string{"web"}, wantPos: []string{"web"}},
		{args: []string{"-o", "json", "web"}, wantPos: []string{"web"}, wantOut: "json"},
		{args: []string{"web", "-o", "json"}, wantPos: []string{"web"}, wantOut: "json"},
		{args: []string{"a", "--server", "http://h", "b", "-o=yaml"}, wantPos: []string{"a", "b"}, wantOut: "yaml", wantSrv: "http://h"},
		{args: []string{"a", "--", "-o", "b"}, wantPos: []string{"a", "-o", "b"}},
		{args: []string{"-"}, wantPos: []string{"-"}},
		{args: []string{"a", "--nope"}, wantFail: true},
		{args: []string{"a", "-o"}, wantFail: true},
	} {
		x := &invocation{cmd: &command{name: "test"}}
		x.fs = flag.NewFlagSet("test", flag.ContinueOnError)
		x.fs.SetOutput(io.Discard)
		x.globals.register(x.fs)
		o := x.outputFlag(false)
		pos, err := x.parse(tc.args)
		if tc.wantFail {
			if _, ok := err.(*usageError); !ok {
				t.Errorf("parse(%q): error %v, want a usage error", tc.args, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parse(%q): %v", tc.args, err)
			continue
		}
		if !reflect.DeepEqual(pos, tc.wantPos) || *o != tc.wantOut || x.globals.server != tc.wantSrv {
			t.Errorf("parse(%q) = %q, -o %q, --server %q; want %q, %q, %q", tc.args, pos, *o, x.globals.server, tc.wantPos, tc.wantOut, tc.wantSrv)
		}
	}
}

func TestParseLabelArgs(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		wantSet    map[string]string
		wantRemove []string
		wantErr    bool
	}{
		{args: []string{"env=prod", "tier-"}, wantSet: map[string]string{"env": "prod"}, wantRemove: []string{"tier"}},
		{args: []string{"empty="}, wantSet: map[string]string{"empty": ""}},
		{args: []string{"a=1", "a=1"}, wantSet: map[string]string{"a": "1"}},
		{args: []string{"a-", "a-"}, wantSet: map[string]string{}, wantRemove: []string{"a"}},
		{args: []string{"a=x=y"}, wantSet: map[string]string{"a": "x=y"}},
		{args: []string{"env"}, wantErr: true},
		{args: []string{"-"}, wantErr: true},
		{args: []string{"=v"}, wantErr: true},
		{args: []string{"a=1", "a=2"}, wantErr: true},
		{args: []string{"a=1", "a-"}, wantErr: true},
	} {
		req, err := parseLabelArgs(tc.args)
		if tc.wantErr {
			if err == nil {
				t.Errorf("parseLabelArgs(%q): no error", tc.args)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseLabelArgs(%q): %v", tc.args, err)
			continue
		}
		if !reflect.DeepEqual(req.GetSet(), tc.wantSet) || !reflect.DeepEqual(req.GetRemove(), tc.wantRemove) {
			t.Errorf("parseLabelArgs(%q) = set %v remove %q; want %v %q", tc.args, req.GetSet(), req.GetRemove(), tc.wantSet, tc.wantRemove)
		}
	}
}

func TestRelativeTimes(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	for _, tc := range []struct{ got, want string }{
		{age(now, at(-45*time.Second)), "45s"},
		{age(now, at(-3*time.Minute-20*time.Second)), "3m"},
		{age(now, at(-2*time.Hour-59*time.Minute)), "2h"},
		{age(now, at(-5*24*time.Hour)), "5d"},
		{age(now, nil), ""},
		{ago(now, at(-time.Minute)), "1m ago"},
		{ago(now, nil), "never"},
		{until(now, at(23*time.Hour+59*time.Minute)), "in 23h"},
		{until(now, at(-time.Second)), "expired"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestTableCells(t *testing.T) {
	var b bytes.Buffer
	tb := newTable(&b, "NAME", "MESSAGE")
	tb.row("web", "")
	tb.row("api", "two\nlines\tand a tab")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	want := "NAME   MESSAGE\nweb    <none>\napi    two lines and a tab\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestClientFromConfig(t *testing.T) {
	path := t.TempDir() + "/drover/config.yaml"
	if err := saveConfig(path, config{Server: "http://hub.example.com:8080", Token: "saved"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name             string
		g                globals
		wantURL, wantTok string
	}{
		{"saved", globals{}, "http://hub.example.com:8080", "saved"},
		{"same hub spelt differently", globals{server: "http://hub.example.com:8080/"}, "http://hub.example.com:8080", "saved"},
		// The saved token is never sent to another hub.
		{"other hub", globals{server: "http://other.example.com:8080"}, "http://other.example.com:8080", ""},
		{"token flag", globals{token: "flag"}, "http://hub.example.com:8080", "flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.g
			g.configPath = path
			x := &invocation{cli: &CLI{Getenv: func(string) string { return "" }}, globals: g}
			c, err := x.client()
			if err != nil {
				t.Fatal(err)
			}
			if c.base.String() != tc.wantURL || c.token != tc.wantTok {
				t.Errorf("client for %s with token %q, want %s with %q", c.base, c.token, tc.wantURL, tc.wantTok)
			}
		})
	}
}
