package ctl

import (
	"go/scanner"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// namedCommand is "droverctl" followed by a command as a person would type
// it: one or two lower-case words (flags and placeholders such as NAME end
// it).
var namedCommand = regexp.MustCompile(`droverctl ([a-z][a-z-]*)( [a-z][a-z-]*)?`)

// prose are words that follow "droverctl" in a sentence about it ("built
// droverctl in 3s", "droverctl is the client"), not in a command.
var prose = map[string]bool{"in": true, "is": true, "and": true, "or": true, "with": true, "of": true, "to": true, "for": true, "on": true, "from": true, "as": true}

// Every droverctl command that a message, a page or the README tells a
// person to run exists: the programs' string literals, the dashboard's
// templates, the demo's banner, and the README's code.
func TestNamedCommandsExist(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	type place struct{ where, text string }
	var places []place
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && rel != "." || d.Name() == "testdata" || d.Name() == "bin" {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case strings.HasSuffix(path, ".pb.go"), strings.HasSuffix(path, ".pb.gw.go"):
		case strings.HasSuffix(path, "_test.go") && !strings.HasPrefix(rel, filepath.Join("e2e", "demo")):
			// Tests name commands to run them; the demo's banner is for people.
		case strings.HasSuffix(path, ".go"):
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, lit := range stringLiterals(path, b) {
				places = append(places, place{rel + ":" + lit.where, lit.text})
			}
		case strings.HasSuffix(path, ".html"), filepath.Base(path) == "README.md":
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for i, line := range strings.Split(string(b), "\n") {
				places = append(places, place{rel + ":" + strconv.Itoa(i+1), line})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, p := range places {
		for _, m := range namedCommand.FindAllStringSubmatch(p.text, -1) {
			found++
			args := strings.Fields(m[1] + m[2])
			if args[0] == "help" || prose[args[0]] {
				continue
			}
			if _, _, err := lookup(args); err != nil {
				t.Errorf("%s names %q, which is not a droverctl command: %v", p.where, m[0], err)
			}
		}
	}
	// The README alone names a dozen; finding none means the walk is broken.
	if found < 10 {
		t.Fatalf("found %d droverctl commands named in the tree; the walk from %s is broken", found, root)
	}
}

type literal struct{ where, text string }

// stringLiterals returns the string literals of a Go file with their line.
func stringLiterals(path string, src []byte) []literal {
	fset := token.NewFileSet()
	file := fset.AddFile(path, -1, len(src))
	var s scanner.Scanner
	s.Init(file, src, nil, 0)
	var out []literal
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			return out
		}
		if tok == token.STRING {
			out = append(out, literal{strconv.Itoa(fset.Position(pos).Line), lit})
		}
	}
}
