package ctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/hub/spec"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// apiVersion is the apiVersion of Drover's declarative files.
const apiVersion = "drover.dev/v1"

// Kinds apply accepts.
const (
	kindApplication = "Application"
	kindCluster     = "Cluster"
)

// maxManifestBytes bounds one apply input; the hub takes 256 KiB per
// application.
const maxManifestBytes = 16 << 20

// manifest is one document of an apply file, decoded and checked.
type manifest struct {
	// where names the document in messages: "apps.yaml, document 2".
	where string
	kind  string
	name  string
	// app is set for kind Application, labels for kind Cluster.
	app    *droverv1.Application
	labels map[string]string
}

func (m *manifest) ref() string { return strings.ToLower(m.kind) + "/" + m.name }

// stringList is a flag that may be repeated.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func runApply(ctx context.Context, x *invocation, args []string) error {
	var files stringList
	x.fs.Var(&files, "f", "file to apply, or - for stdin; may be repeated")
	x.fs.Var(&files, "filename", "same as -f")
	if _, err := x.parseN(args, 0); err != nil {
		return err
	}
	if len(files) == 0 {
		return x.usageErrorf("-f FILE is required")
	}
	// Every document is read and checked before anything is sent, so a
	// mistake anywhere in the input changes nothing.
	var all []*manifest
	seen := map[string]string{}
	for _, file := range files {
		ms, err := x.readManifests(file)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if prev, dup := seen[m.ref()]; dup {
				return fmt.Errorf("%s: %s is also declared in %s", m.where, m.ref(), prev)
			}
			seen[m.ref()] = m.where
		}
		all = append(all, ms...)
	}
	if len(all) == 0 {
		return errors.New("no objects to apply in the input")
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	for _, m := range all {
		var result string
		switch m.kind {
		case kindApplication:
			result, err = applyApplication(ctx, c, m.app)
		case kindCluster:
			result, err = applyClusterLabels(ctx, c, m.name, m.labels)
		}
		if err != nil {
			return fmt.Errorf("%s (%s): %w", m.where, m.ref(), err)
		}
		fmt.Fprintf(x.out(), "%s %s\n", m.ref(), result)
	}
	return nil
}

// readManifests reads and checks every document of file ("-" is stdin).
func (x *invocation) readManifests(file string) ([]*manifest, error) {
	var r io.Reader
	name := file
	if file == "-" {
		r, name = x.cli.Stdin, "stdin"
	} else {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	if r == nil {
		return nil, fmt.Errorf("%s: nothing to read", name)
	}
	data, err := io.ReadAll(io.LimitReader(r, maxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxManifestBytes)
	}
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*manifest
	for n := 1; ; n++ {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		where := fmt.Sprintf("%s, document %d", name, n)
		m, err := decodeManifest(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if m == nil {
			continue // empty document, e.g. only comments
		}
		m.where = where
		out = append(out, m)
	}
}

// decodeManifest decodes one YAML document; nil for an empty one. Every
// field must be known: a misspelt field would otherwise be dropped without
// a word, and the application deployed without what it says.
func decodeManifest(doc []byte) (*manifest, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if t := bytes.TrimSpace(js); bytes.Equal(t, []byte("null")) || len(t) == 0 {
		return nil, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return nil, errors.New("want a mapping with apiVersion, kind, metadata and spec")
	}
	if err := onlyKeys("", top, "apiVersion", "kind", "metadata", "spec"); err != nil {
		return nil, err
	}
	var av, kind string
	if err := decodeString(top, "apiVersion", &av); err != nil {
		return nil, err
	}
	if err := decodeString(top, "kind", &kind); err != nil {
		return nil, err
	}
	if av != apiVersion {
		return nil, fmt.Errorf("apiVersion: %q: want %s", av, apiVersion)
	}
	if kind != kindApplication && kind != kindCluster {
		return nil, fmt.Errorf("kind: %q: want %s or %s", kind, kindApplication, kindCluster)
	}
	m := &manifest{kind: kind}
	var meta map[string]json.RawMessage
	if raw, ok := top["metadata"]; ok {
		if err := json.Unmarshal(raw, &meta); err != nil {
			return nil, errors.New("metadata: want a mapping with name")
		}
	}
	if err := decodeString(meta, "name", &m.name); err != nil {
		return nil, fmt.Errorf("metadata.%w", err)
	}

	switch kind {
	case kindApplication:
		if err := onlyKeys("metadata.", meta, "name"); err != nil {
			return nil, err
		}
		as, err := decodeSpec(top["spec"])
		if err != nil {
			return nil, err
		}
		m.app = &droverv1.Application{Name: m.name, Spec: as}
		var ps problems
		ps.addFieldErrors("metadata.", spec.ValidateName(m.name))
		ps.addFieldErrors("", spec.ValidateSpec(as))
		if err := ps.err(); err != nil {
			return nil, err
		}
	case kindCluster:
		if err := onlyKeys("metadata.", meta, "name", "labels"); err != nil {
			return nil, err
		}
		if _, ok := top["spec"]; ok {
			return nil, errors.New("spec: a Cluster has no spec; its labels go in metadata.labels")
		}
		if raw, ok := meta["labels"]; ok {
			if err := json.Unmarshal(raw, &m.labels); err != nil {
				return nil, errors.New("metadata.labels: want a mapping of strings to strings (quote values such as \"true\" or \"1\")")
			}
		}
		var ps problems
		ps.addFieldErrors("metadata.", spec.ValidateName(m.name))
		ps.addFieldErrors("metadata.", spec.ValidateLabels(m.labels))
		if err := ps.err(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// onlyKeys refuses keys of obj other than allowed.
func onlyKeys(prefix string, obj map[string]json.RawMessage, allowed ...string) error {
	var unknown []string
	for _, k := range sortedKeys(obj) {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			unknown = append(unknown, prefix+k)
		}
	}
	switch len(unknown) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%s: unknown field (known: %s)", unknown[0], strings.Join(allowed, ", "))
	}
	return fmt.Errorf("unknown fields %s (known in %s: %s)", strings.Join(unknown, ", "), orDefault(strings.TrimSuffix(prefix, "."), "the document"), strings.Join(allowed, ", "))
}

// decodeString reads obj[key], which must be a non-empty string.
func decodeString(obj map[string]json.RawMessage, key string, dst *string) error {
	raw, ok := obj[key]
	if !ok {
		return fmt.Errorf("%s: required", key)
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("%s: want a string", key)
	}
	if *dst == "" {
		return fmt.Errorf("%s: required", key)
	}
	return nil
}

// decodeSpec decodes an application spec with the API's JSON names.
func decodeSpec(raw json.RawMessage) (*droverv1.ApplicationSpec, error) {
	spec := &droverv1.ApplicationSpec{}
	if raw == nil {
		return nil, errors.New("spec: required")
	}
	// protojson refuses unknown fields too, but names neither the path nor
	// the field it expected; say both.
	var generic any
	if err := json.Unmarshal(raw, &generic); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	var ps problems
	unknownFields("spec", generic, spec.ProtoReflect().Descriptor(), &ps)
	if err := ps.err(); err != nil {
		return nil, err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(raw, spec); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	return spec, nil
}

// unknownFields appends a problem for every key of v, at path, that
// message md has no field for, looking into nested messages, lists and
// maps. Values of the wrong type are left to protojson.
func unknownFields(path string, v any, md protoreflect.MessageDescriptor, ps *problems) {
	obj, ok := v.(map[string]any)
	if !ok || md.ParentFile().Package() == "google.protobuf" {
		// Well-known types such as Struct (Helm values) take any JSON.
		return
	}
	for _, k := range sortedKeys(obj) {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k)) // protojson takes proto names too
		}
		p := path + "." + k
		if fd == nil {
			msg := p + ": unknown field"
			if s := similarField(k, md); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			}
			*ps = append(*ps, msg)
			continue
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				continue
			}
			m, _ := obj[k].(map[string]any)
			for _, mk := range sortedKeys(m) {
				unknownFields(fmt.Sprintf("%s[%s]", p, mk), m[mk], fd.MapValue().Message(), ps)
			}
		case fd.IsList():
			if fd.Kind() != protoreflect.MessageKind {
				continue
			}
			l, _ := obj[k].([]any)
			for i, e := range l {
				unknownFields(fmt.Sprintf("%s[%d]", p, i), e, fd.Message(), ps)
			}
		case fd.Kind() == protoreflect.MessageKind:
			unknownFields(p, obj[k], fd.Message(), ps)
		}
	}
}

// similarField is the JSON name of md's field that k likely meant, or "":
// the same but for case, '_' and '-', else the one closest within two
// typos (repoUrl, self_heal, matchLabel, knd).
func similarField(k string, md protoreflect.MessageDescriptor) string {
	norm := func(s string) string {
		return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s))
	}
	want := norm(k)
	best, bestDist := "", 3
	fds := md.Fields()
	for i := 0; i < fds.Len(); i++ {
		name := fds.Get(i).JSONName()
		if d := editDistance(norm(name), want); d < bestDist {
			best, bestDist = name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// problems collects everything wrong with one document, so that all of it
// is fixed in one round.
type problems []string

// addFieldErrors adds what one of the hub's validators found, with prefix
// before every field path so that it matches the file.
func (ps *problems) addFieldErrors(prefix string, err error) {
	var fes spec.FieldErrors
	switch {
	case err == nil:
	case errors.As(err, &fes):
		for _, fe := range fes {
			*ps = append(*ps, prefix+fe.Field+": "+fe.Msg)
		}
	default:
		*ps = append(*ps, err.Error())
	}
}

// err is nil for no problems, one line for one, and a list for several.
func (ps problems) err() error {
	switch len(ps) {
	case 0:
		return nil
	case 1:
		return errors.New(ps[0])
	}
	return fmt.Errorf("%d problems:\n  - %s", len(ps), strings.Join(ps, "\n  - "))
}

// applyApplication creates the application or replaces its spec, and says
// which: created, configured, or unchanged when the hub's generation did
// not move.
func applyApplication(ctx context.Context, c *client, app *droverv1.Application) (string, error) {
	var cur droverv1.GetApplicationResponse
	err := c.call(ctx, "GET", apiPath("applications", app.GetName()), nil, nil, &cur)
	if isNotFound(err) {
		if err := c.call(ctx, "POST", apiPath("applications"), nil, app, &droverv1.CreateApplicationResponse{}); err != nil {
			return "", err
		}
		return "created", nil
	}
	if err != nil {
		return "", err
	}
	var resp droverv1.UpdateApplicationResponse
	if err := c.call(ctx, "PUT", apiPath("applications", app.GetName()), nil, app, &resp); err != nil {
		return "", err
	}
	if resp.GetApplication().GetGeneration() == cur.GetApplication().GetGeneration() {
		return "unchanged", nil
	}
	return "configured", nil
}

// applyClusterLabels makes a registered cluster's labels exactly want.
func applyClusterLabels(ctx context.Context, c *client, name string, want map[string]string) (string, error) {
	var cur droverv1.GetClusterResponse
	err := c.call(ctx, "GET", apiPath("clusters", name), nil, nil, &cur)
	if isNotFound(err) {
		return "", fmt.Errorf("cluster %q is not registered; clusters join through an agent with a join token (droverctl token create)", name)
	}
	if err != nil {
		return "", err
	}
	req := &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{}}
	have := cur.GetCluster().GetLabels()
	for _, k := range sortedKeys(want) {
		if v, ok := have[k]; !ok || v != want[k] {
			req.Set[k] = want[k]
		}
	}
	for _, k := range sortedKeys(have) {
		if _, ok := want[k]; !ok {
			req.Remove = append(req.Remove, k)
		}
	}
	if len(req.Set) == 0 && len(req.Remove) == 0 {
		return "unchanged", nil
	}
	if err := c.call(ctx, "PATCH", apiPath("clusters", name, "labels"), nil, req, &droverv1.UpdateClusterLabelsResponse{}); err != nil {
		return "", err
	}
	return "configured", nil
}
