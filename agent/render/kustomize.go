package render

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"

	yamlv3 "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/konfig"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/openapi"
	"sigs.k8s.io/yaml"
)

// kustomizeMu makes Kustomize runs take turns: Kustomize keeps its OpenAPI
// schema in process-global state that a kustomization's "openapi" field
// replaces, so two concurrent builds could see each other's schema.
var kustomizeMu sync.Mutex

// renderKustomize builds the kustomization at dir of the checkout at root.
//
// The boundary is the repository, not the kustomization: an overlay may
// use a base in a sibling directory ("../base"), as the usual
// base/overlays layout does, but nothing outside the repository. Kustomize
// reads through confinedFS, which refuses any path that resolves (through
// symbolic links too) outside the repository, and cannot write. Within
// that, Kustomize's own LoadRestrictionsRootOnly still keeps files (patches,
// generator sources) inside their kustomization's directory.
//
// Kustomize would fetch remote bases (git URLs) and files (http URLs) by
// itself; a render must not touch the network (the commit pins everything,
// and a URL would make the same commit render differently). Kustomize
// offers no hook to forbid it, so every kustomization the build reaches is
// checked first, and any reference Kustomize would take as remote fails the
// render with the field that holds it.
func renderKustomize(ctx context.Context, root, dir string, b *budget) ([]*item, error) {
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("render: open checkout: %w", err)
	}
	realRoot, err = filepath.Abs(realRoot)
	if err != nil {
		return nil, fmt.Errorf("render: open checkout: %w", err)
	}
	cfs := &confinedFS{FileSystem: filesys.MakeFsOnDisk(), root: realRoot, budget: b}
	start, err := cfs.resolve(filepath.Join(realRoot, filepath.FromSlash(dir)))
	if err != nil {
		return nil, errorf(dir, 0, "%v", err)
	}
	if err := checkKustomization(ctx, cfs, start, make(map[string]bool)); err != nil {
		return nil, err
	}

	m, err := runKustomize(cfs, start)
	if cfs.limitErr != nil {
		// Whatever Kustomize made of it (it may try a file it could not
		// read as a directory next), a file over the limits fails the
		// render, with the message naming it.
		return nil, cfs.limitErr
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, errorf(dir, 0, "kustomize build: %s", cfs.relMsg(err.Error()))
	}
	items, err := fromResMap(m, func(i int) *item {
		return &item{path: dir, what: fmt.Sprintf("kustomize build, object %d", i+1)}
	})
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if err := validate(it); err != nil {
			return nil, err
		}
	}
	return items, b.checkCount(len(items), dir)
}

// builtinSchema is the OpenAPI schema Kustomize uses when no kustomization
// names one.
var builtinSchema = openapi.GetSchemaVersion()

// runKustomize runs Kustomize's build of dir, one build at a time, and
// leaves nothing of it in the process. A kustomization's "openapi" field
// replaces Kustomize's process-global schema, and Kustomize puts it back
// only when a later kustomization names another: without a reset, a
// custom schema would stay in memory after its application is gone and
// decide how every later build merges patches. A schema file that does
// not parse makes Kustomize panic; that fails this application only.
func runKustomize(fsys filesys.FileSystem, dir string) (m resmap.ResMap, err error) {
	kustomizeMu.Lock()
	defer kustomizeMu.Unlock()
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, fmt.Errorf("%v", p)
			openapi.ResetOpenAPI()
			return
		}
		if openapi.GetSchemaVersion() != builtinSchema {
			openapi.ResetOpenAPI()
		}
	}()
	return krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
}

// fromResMap converts Kustomize's resources into items made by mk.
func fromResMap(m resmap.ResMap, mk func(i int) *item) ([]*item, error) {
	res := m.Resources()
	items := make([]*item, 0, len(res))
	for i, r := range res {
		it := mk(i)
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, errorf(it.path, 0, "%s: %v", it.what, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return nil, errorf(it.path, 0, "%s: %v", it.what, err)
		}
		it.obj = u
		items = append(items, it)
	}
	return items, nil
}

// checkKustomization checks the kustomization in directory dir (a real
// path inside the repository) and, recursively, those it uses, for
// references Kustomize would fetch from the network. seen stops cycles
// (Kustomize reports those itself).
func checkKustomization(ctx context.Context, cfs *confinedFS, dir string, seen map[string]bool) error {
	if seen[dir] {
		return nil
	}
	seen[dir] = true
	if err := ctx.Err(); err != nil {
		return err
	}
	var file string
	var data []byte
	for _, name := range konfig.RecognizedKustomizationFileNames() {
		real, err := cfs.resolve(filepath.Join(dir, name))
		if err != nil {
			return errorf(cfs.rel(dir), 0, "%v", err)
		}
		d, err := cfs.readChecked(real)
		if err == nil {
			file, data = filepath.Join(dir, name), d
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if file == "" {
		// Not a kustomization: Kustomize reports it if it needs one.
		return nil
	}
	rel := cfs.rel(file)
	var k types.Kustomization
	if err := yaml.Unmarshal(data, &k); err != nil {
		return errorf(rel, 0, "%v", err)
	}

	refuse := func(field, ref string) error {
		if looksRemote(ref) {
			return errorf(rel, 0, "%s: %q is a remote reference; a render uses only the application's repository at its pinned commit, so copy what it refers to into the repository", field, ref)
		}
		return nil
	}
	// follow checks a reference that may be a directory holding another
	// kustomization, and checks that one too.
	follow := func(field, ref string) error {
		if err := refuse(field, ref); err != nil {
			return err
		}
		// Joined as Kustomize joins: lexically, from the real directory.
		real, err := cfs.resolve(filepath.Join(dir, filepath.FromSlash(ref)))
		if err != nil {
			return errorf(rel, 0, "%s: %q %v", field, ref, err)
		}
		if info, err := os.Stat(real); err == nil && info.IsDir() {
			return checkKustomization(ctx, cfs, real, seen)
		}
		return nil
	}
	// plugin checks a generator, transformer or validator entry: inline
	// YAML or a file of plugin configurations (whose own fields may name
	// files to load), or a kustomization directory making them. Their
	// fields differ by plugin, so every string in them is checked.
	plugin := func(field, ref string) error {
		if strings.Contains(ref, "\n") {
			return refuseStrings(rel, field, ref)
		}
		if err := follow(field, ref); err != nil {
			return err
		}
		real, err := cfs.resolve(filepath.Join(dir, filepath.FromSlash(ref)))
		if err != nil {
			return nil // follow reported it
		}
		if info, err := os.Stat(real); err == nil && info.Mode().IsRegular() {
			content, err := cfs.readChecked(real)
			if err != nil {
				return err
			}
			return refuseStrings(cfs.rel(real), field, string(content))
		}
		return nil
	}

	for _, l := range []struct {
		field string
		refs  []string
		check func(field, ref string) error
	}{
		{"resources", k.Resources, follow},
		{"bases", k.Bases, follow},
		{"components", k.Components, follow},
		{"crds", k.Crds, refuse},
		{"configurations", k.Configurations, refuse},
		{"generators", k.Generators, plugin},
		{"transformers", k.Transformers, plugin},
		{"validators", k.Validators, plugin},
		{"openapi.path", []string{k.OpenAPI["path"]}, refuse},
		{"patchesStrategicMerge", smpPaths(k.PatchesStrategicMerge), refuse},
		{"patches", patchPaths(k.Patches), refuse},
		{"patchesJson6902", patchPaths(k.PatchesJson6902), refuse},
		{"replacements", replacementPaths(k.Replacements), refuse},
		{"configMapGenerator", generatorPaths(configMapSources(k.ConfigMapGenerator)), refuse},
		{"secretGenerator", generatorPaths(secretSources(k.SecretGenerator)), refuse},
	} {
		for _, ref := range l.refs {
			if ref == "" {
				continue
			}
			if err := l.check(l.field, ref); err != nil {
				return err
			}
		}
	}
	return nil
}

// refuseStrings fails if any string in the YAML text (all its documents)
// looks remote. It fails closed: a plugin configuration with a URL in a
// label value is refused too, and text that does not parse is checked word
// by word.
func refuseStrings(rel, field, text string) error {
	found := func(s string) error {
		return errorf(rel, 0, "%s: %q looks like a remote reference; a render uses only the application's repository", field, s)
	}
	var bad string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if bad == "" && looksRemote(x) {
				bad = x
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		case map[any]any:
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	dec := yamlv3.NewDecoder(strings.NewReader(text))
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			for _, word := range strings.Fields(text) {
				if w := strings.Trim(word, `"',[]{}`); looksRemote(w) {
					return found(w)
				}
			}
			return nil
		}
		walk(v)
		if bad != "" {
			return found(bad)
		}
	}
	return nil
}

func smpPaths(ps []types.PatchStrategicMerge) []string {
	var out []string
	for _, p := range ps {
		// Inline patches span lines; a single line is a path.
		if !strings.Contains(string(p), "\n") {
			out = append(out, string(p))
		}
	}
	return out
}

func patchPaths(ps []types.Patch) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Path)
	}
	return out
}

func replacementPaths(rs []types.ReplacementField) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Path)
	}
	return out
}

func configMapSources(gs []types.ConfigMapArgs) []types.KvPairSources {
	var out []types.KvPairSources
	for _, g := range gs {
		out = append(out, g.KvPairSources)
	}
	return out
}

func secretSources(gs []types.SecretArgs) []types.KvPairSources {
	var out []types.KvPairSources
	for _, g := range gs {
		out = append(out, g.KvPairSources)
	}
	return out
}

// generatorPaths are the files generators read: "[key=]path" sources and
// env files.
func generatorPaths(ss []types.KvPairSources) []string {
	var out []string
	for _, s := range ss {
		for _, f := range s.FileSources {
			if _, p, ok := strings.Cut(f, "="); ok {
				f = p
			}
			out = append(out, f)
		}
		out = append(out, s.EnvSources...)
		out = append(out, s.EnvSource) //nolint:staticcheck // still read by Kustomize
	}
	return out
}

// scpUser is how Kustomize recognises "user@host:path" git addresses.
var scpUser = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]*@`)

// looksRemote reports whether Kustomize would fetch ref from the network:
// any URL ("https://", "ssh://", "file://" too, which Kustomize clones
// with git), a "git::" address, "github.com/..." and "user@host:..." forms.
// It errs on the side of refusing.
func looksRemote(ref string) bool {
	s := strings.TrimSpace(ref)
	if len(s) >= 5 && strings.EqualFold(s[:5], "git::") {
		return true
	}
	lower := strings.ToLower(s)
	return strings.Contains(lower, "://") ||
		strings.HasPrefix(lower, "github.com/") ||
		strings.HasPrefix(lower, "github.com:") ||
		scpUser.MatchString(s)
}

// confinedFS is the disk, read-only, limited to the repository at root (a
// real path): any path that resolves outside it, through ".." or symbolic
// links, is refused, and reads are charged to the render's budget.
type confinedFS struct {
	filesys.FileSystem
	root   string
	budget *budget
	// limitErr is the first file refused for the render's limits.
	limitErr *Error
}

var _ filesys.FileSystem = (*confinedFS)(nil)

var errReadOnly = errors.New("the repository is read-only during a render")

// resolve returns the real path of p (absolute), resolving symbolic links
// of the part that exists, or an error if that leads outside the
// repository.
func (c *confinedFS) resolve(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if !c.inside(abs) {
		// Not named: the path is of the agent's disk, not of the
		// repository.
		return "", errors.New("leads outside the repository")
	}
	real, err := evalExisting(abs)
	switch {
	case err != nil:
		return "", fmt.Errorf("cannot be resolved (%s): %v", c.rel(abs), pathErrCause(err))
	case !c.inside(real):
		return "", fmt.Errorf("leads outside the repository through a symbolic link (%s)", c.rel(abs))
	}
	return real, nil
}

func (c *confinedFS) inside(p string) bool {
	return p == c.root || strings.HasPrefix(p, c.root+string(filepath.Separator))
}

// evalExisting is filepath.EvalSymlinks for paths that may not exist yet:
// the longest existing prefix is resolved, the rest appended.
func evalExisting(p string) (string, error) {
	real, err := filepath.EvalSymlinks(p)
	if err == nil {
		return real, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	parent := filepath.Dir(p)
	if parent == p {
		return p, nil
	}
	realParent, err := evalExisting(parent)
	if err != nil {
		return "", err
	}
	return filepath.Join(realParent, filepath.Base(p)), nil
}

// rel names p, inside the repository, for messages.
func (c *confinedFS) rel(p string) string {
	if r, err := filepath.Rel(c.root, p); err == nil && filepath.IsLocal(r) {
		return filepath.ToSlash(r)
	}
	if p == c.root {
		return "."
	}
	return filepath.Base(p)
}

// relMsg rewrites Kustomize's absolute paths inside the checkout to paths
// relative to the repository, for readable messages.
func (c *confinedFS) relMsg(msg string) string {
	msg = strings.ReplaceAll(msg, c.root+string(filepath.Separator), "")
	return strings.ReplaceAll(msg, c.root, ".")
}

func (c *confinedFS) Create(string) (filesys.File, error) { return nil, errReadOnly }
func (c *confinedFS) Mkdir(string) error                  { return errReadOnly }
func (c *confinedFS) MkdirAll(string) error               { return errReadOnly }
func (c *confinedFS) RemoveAll(string) error              { return errReadOnly }
func (c *confinedFS) WriteFile(string, []byte) error      { return errReadOnly }

// Open is not how Kustomize reads files (ReadFile is), but a file opened
// here is held to the per-file limit all the same.
func (c *confinedFS) Open(p string) (filesys.File, error) {
	real, err := c.resolve(p)
	if err != nil {
		return nil, err
	}
	if info, err := os.Stat(real); err == nil && info.Mode().IsRegular() {
		if err := c.budget.checkFile(c.rel(real), info.Size()); err != nil {
			return nil, c.refuse(err)
		}
	}
	return c.FileSystem.Open(real)
}

func (c *confinedFS) IsDir(p string) bool {
	real, err := c.resolve(p)
	return err == nil && c.FileSystem.IsDir(real)
}

func (c *confinedFS) Exists(p string) bool {
	real, err := c.resolve(p)
	return err == nil && c.FileSystem.Exists(real)
}

func (c *confinedFS) ReadDir(p string) ([]string, error) {
	real, err := c.resolve(p)
	if err != nil {
		return nil, err
	}
	return c.FileSystem.ReadDir(real)
}

func (c *confinedFS) CleanedAbs(p string) (filesys.ConfirmedDir, string, error) {
	if _, err := c.resolve(p); err != nil {
		return "", "", err
	}
	return c.FileSystem.CleanedAbs(p)
}

func (c *confinedFS) Glob(pattern string) ([]string, error) {
	matches, err := c.FileSystem.Glob(pattern)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range matches {
		if _, err := c.resolve(m); err == nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// ReadFile reads a file for Kustomize: its size is checked against the
// render's limits (and charged) before it is read, and the read is bounded
// by that size.
func (c *confinedFS) ReadFile(p string) ([]byte, error) {
	real, err := c.resolve(p)
	if err != nil {
		return nil, err
	}
	f, info, err := openRegular(real)
	if err != nil {
		// As the disk's own ReadFile fails: Kustomize tells a missing
		// file and a directory from other errors.
		return nil, err
	}
	defer f.Close()
	if err := c.budget.read(c.rel(real), info.Size()); err != nil {
		return nil, c.refuse(err)
	}
	return readSized(f, info.Size(), c.rel(real))
}

// readChecked reads the file at real (a resolved path) for checking, before
// Kustomize reads it again: held to the per-file limit, not charged.
// Errors other than a missing file are *Error naming it.
func (c *confinedFS) readChecked(real string) ([]byte, error) {
	f, info, err := openRegular(real)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		return nil, errorf(c.rel(real), 0, "%v", pathErrCause(err))
	}
	defer f.Close()
	if err := c.budget.checkFile(c.rel(real), info.Size()); err != nil {
		return nil, err
	}
	return readSized(f, info.Size(), c.rel(real))
}

// openRegular opens the regular file at real; a directory or anything else
// that is not a regular file (a device, a pipe: no size to check, maybe no
// end) is refused.
func openRegular(real string) (*os.File, fs.FileInfo, error) {
	f, err := os.Open(real)
	if err != nil {
		return nil, nil, err
	}
	info, err := f.Stat()
	if err == nil && !info.Mode().IsRegular() {
		err = &fs.PathError{Op: "read", Path: real, Err: errNotRegular}
		if info.IsDir() {
			err = &fs.PathError{Op: "read", Path: real, Err: syscall.EISDIR}
		}
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, info, nil
}

var errNotRegular = errors.New("not a regular file")

// refuse records err, a file over the limits, as the render's error.
func (c *confinedFS) refuse(err error) error {
	var e *Error
	if c.limitErr == nil && errors.As(err, &e) {
		c.limitErr = e
	}
	return err
}

func (c *confinedFS) Walk(p string, walkFn filepath.WalkFunc) error {
	if _, err := c.resolve(p); err != nil {
		return err
	}
	// filepath.Walk follows no symbolic link, p's own included, so it
	// stays inside.
	return c.FileSystem.Walk(p, walkFn)
}
