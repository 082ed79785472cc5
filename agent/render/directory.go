package render

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// renderDirectory reads every manifest below dir of the repository r:
// *.yaml, *.yml and *.json files, recursively, in path order.
//
// Hidden files and directories (".github/", ".gitlab-ci.yml") are skipped:
// they hold tooling, not manifests. A symbolic link to a file is read if
// it stays inside the repository; a symbolic link to a directory is not
// descended into (what it holds is read under its real path if that is
// below dir, and following it could read a file twice or loop), but it
// must stay inside the repository too. Any link leading outside, or
// absolute, fails the render.
func renderDirectory(ctx context.Context, r *os.Root, dir string, b *budget) ([]*item, error) {
	files, err := manifestFiles(ctx, r.FS(), dir)
	if err != nil {
		return nil, err
	}
	var items []*item
	for _, p := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data, err := readFile(r, p, b)
		if err != nil {
			return nil, err
		}
		var objs []*item
		if strings.HasSuffix(p, ".json") {
			objs, err = decodeJSON(p, data)
		} else {
			objs, err = decodeYAML(p, data)
		}
		if err != nil {
			return nil, err
		}
		items = append(items, objs...)
		if err := b.checkCount(len(items), p); err != nil {
			return nil, err
		}
	}
	return items, nil
}

// manifestFiles lists the manifests below dir, sorted by path within each
// directory, depth first.
func manifestFiles(ctx context.Context, fsys fs.FS, dir string) ([]string, error) {
	var out []string
	var walk func(d string) error
	walk = func(d string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Sorted by name.
		entries, err := fs.ReadDir(fsys, d)
		if err != nil {
			return errorf(d, 0, "cannot read directory: %v", pathErrCause(err))
		}
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") {
				continue
			}
			p := path.Join(d, name)
			switch {
			case e.Type()&fs.ModeSymlink != 0:
				// fs.Stat follows the link through the os.Root, which
				// refuses links leaving the repository.
				info, err := fs.Stat(fsys, p)
				switch {
				case errors.Is(err, fs.ErrNotExist):
					if isManifest(name) {
						return errorf(p, 0, "symbolic link to a file that does not exist")
					}
				case err != nil:
					return errorf(p, 0, "symbolic link leads outside the repository or is absolute; links must stay inside the repository and be relative")
				case info.Mode().IsRegular() && isManifest(name):
					out = append(out, p)
				}
			case e.IsDir():
				if err := walk(p); err != nil {
					return err
				}
			case e.Type().IsRegular() && isManifest(name):
				out = append(out, p)
			}
		}
		return nil
	}
	if err := walk(dir); err != nil {
		return nil, err
	}
	return out, nil
}

func isManifest(name string) bool {
	switch path.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// readFile reads p from r, checking its size against b's limits before
// reading, so an oversized file is never loaded.
func readFile(r *os.Root, p string, b *budget) ([]byte, error) {
	f, err := r.Open(p)
	if err != nil {
		return nil, errorf(p, 0, "cannot open: %v", pathErrCause(err))
	}
	defer f.Close()
	return readLimited(f, p, b)
}

// readLimited reads the open file f, named p for messages, after checking
// its size (from the open file, so it is the file read) against b's
// limits. What it reads is bounded by that size, so a file that grows
// meanwhile cannot take more memory than was allowed.
func readLimited(f *os.File, p string, b *budget) ([]byte, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, errorf(p, 0, "cannot read: %v", pathErrCause(err))
	}
	if !info.Mode().IsRegular() {
		// A device or pipe has no size to check and may never end.
		return nil, errorf(p, 0, "not a regular file")
	}
	if err := b.read(p, info.Size()); err != nil {
		return nil, err
	}
	return readSized(f, info.Size(), p)
}

// readSized reads f, of size bytes when checked, and refuses it if it
// has grown since: the read is bounded by what was checked.
func readSized(f *os.File, size int64, p string) ([]byte, error) {
	// One byte more than the size, to see a file that grew.
	data := make([]byte, size+1)
	n, err := io.ReadFull(f, data)
	switch {
	case err == nil:
		return nil, errorf(p, 0, "changed while being read")
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return data[:n], nil
	}
	return nil, errorf(p, 0, "cannot read: %v", pathErrCause(err))
}

// decodeYAML parses the documents of a YAML file. Empty documents are
// skipped. YAML is read as YAML 1.2 (like Kustomize): "yes" and "on" are
// strings, not booleans.
func decodeYAML(p string, data []byte) ([]*item, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var items []*item
	for doc := 1; ; doc++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return items, nil
		}
		if err != nil {
			// yaml.v3 names the line in the whole file: "yaml: line 7:
			// mapping values are not allowed in this context".
			return nil, errorf(p, 0, "document %d: %v", doc, err)
		}
		line := n.Line
		if len(n.Content) > 0 {
			line = n.Content[0].Line
		}
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, errorf(p, line, "document %d: %v", doc, err)
		}
		if v == nil {
			continue
		}
		objs, err := toItems(p, line, fmt.Sprintf("document %d", doc), v)
		if err != nil {
			return nil, err
		}
		items = append(items, objs...)
	}
}

// decodeJSON parses a JSON file: one object, or several one after another.
func decodeJSON(p string, data []byte) ([]*item, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var items []*item
	for doc := 1; ; doc++ {
		// Skip whitespace so the offset is where the value starts.
		start := dec.InputOffset()
		for start < int64(len(data)) && strings.ContainsRune(" \t\r\n", rune(data[start])) {
			start++
		}
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return items, nil
		}
		if err != nil {
			var syn *json.SyntaxError
			if errors.As(err, &syn) {
				return nil, errorf(p, lineAt(data, syn.Offset), "value %d: %v", doc, err)
			}
			return nil, errorf(p, lineAt(data, start), "value %d: %v", doc, err)
		}
		if v == nil {
			continue
		}
		objs, err := toItems(p, lineAt(data, start), fmt.Sprintf("value %d", doc), v)
		if err != nil {
			return nil, err
		}
		items = append(items, objs...)
	}
}

// lineAt returns the 1-based line of byte offset off.
func lineAt(data []byte, off int64) int {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	return bytes.Count(data[:off], []byte{'\n'}) + 1
}

// toItems turns one decoded document into objects: itself, or the items
// of a List.
func toItems(p string, line int, what string, v any) ([]*item, error) {
	jv, err := jsonValue(v)
	if err != nil {
		return nil, errorf(p, line, "%s: %v", what, err)
	}
	m, ok := jv.(map[string]any)
	if !ok {
		return nil, errorf(p, line, "%s: not an object but %s", what, describe(jv))
	}
	u := &unstructured.Unstructured{Object: m}
	if isList(u) {
		raw := m["items"].([]any)
		items := make([]*item, 0, len(raw))
		for i, x := range raw {
			w := fmt.Sprintf("%s, item %d", what, i+1)
			im, ok := x.(map[string]any)
			if !ok {
				return nil, errorf(p, line, "%s: not an object but %s", w, describe(x))
			}
			it := &item{obj: &unstructured.Unstructured{Object: im}, path: p, line: line, what: w}
			if err := validate(it); err != nil {
				return nil, err
			}
			items = append(items, it)
		}
		return items, nil
	}
	it := &item{obj: u, path: p, line: line, what: what}
	if err := validate(it); err != nil {
		return nil, err
	}
	return []*item{it}, nil
}

// isList reports whether u is a list of objects (kind List, or any
// "...List" kind with items, as kubectl accepts).
func isList(u *unstructured.Unstructured) bool {
	kind, _ := u.Object["kind"].(string)
	_, hasItems := u.Object["items"].([]any)
	return hasItems && strings.HasSuffix(kind, "List")
}

// validate checks what every object needs to be applied.
func validate(it *item) error {
	for _, f := range []struct {
		name  string
		value string
	}{
		{"apiVersion", stringField(it.obj.Object, "apiVersion")},
		{"kind", stringField(it.obj.Object, "kind")},
		{"metadata.name", it.obj.GetName()},
	} {
		if f.value == "" {
			return errorf(it.path, it.line, "%s: %s is missing or not a string", it.what, f.name)
		}
	}
	if md, ok := it.obj.Object["metadata"]; ok {
		if _, ok := md.(map[string]any); !ok {
			return errorf(it.path, it.line, "%s: metadata is not an object", it.what)
		}
	}
	return nil
}

func stringField(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// jsonValue converts what yaml.v3 or encoding/json decoded into the types
// unstructured objects hold: map[string]any, []any, string, int64,
// float64, bool and nil.
func jsonValue(v any) (any, error) {
	switch x := v.(type) {
	case nil, string, bool, int64:
		return x, nil
	case int:
		return int64(x), nil
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x), nil
		}
		return float64(x), nil
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return nil, fmt.Errorf("%v is not a number JSON can hold", x)
		}
		return x, nil
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i, nil
		}
		f, err := x.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %s: %v", x, err)
		}
		return f, nil
	case time.Time:
		// Only an explicit !!timestamp tag gets here.
		return x.Format(time.RFC3339Nano), nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			c, err := jsonValue(e)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			c, err := jsonValue(e)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = c
		}
		return out, nil
	case map[any]any:
		// Keys that are not strings in YAML (8080: x, true: y) become
		// their text, as kubectl does.
		out := make(map[string]any, len(x))
		for k, e := range x {
			ks := fmt.Sprint(k)
			c, err := jsonValue(e)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", ks, err)
			}
			if _, dup := out[ks]; dup {
				return nil, fmt.Errorf("key %q appears twice", ks)
			}
			out[ks] = c
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported value of type %T", v)
}

func describe(v any) string {
	switch v.(type) {
	case []any:
		return "a list"
	case string:
		return "a string"
	case nil:
		return "null"
	}
	return fmt.Sprintf("a %T", v)
}
