package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/internal/artifact"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// none is what tables show for an empty value, as kubectl does.
const none = "<none>"

// Output formats of -o.
const (
	outTable = ""
	outWide  = "wide"
	outJSON  = "json"
	outYAML  = "yaml"
)

// outputFlag registers -o/--output; wide says whether the command has a
// wide table.
func (x *invocation) outputFlag(wide bool) *string {
	var o string
	usage := "output format: json or yaml"
	if wide {
		usage = "output format: wide, json or yaml"
	}
	x.fs.StringVar(&o, "o", "", usage)
	x.fs.StringVar(&o, "output", "", "same as -o")
	return &o
}

// checkOutput validates an -o value before anything is sent.
func (x *invocation) checkOutput(o string, wide bool) error {
	switch o {
	case outTable, outJSON, outYAML:
		return nil
	case outWide:
		if wide {
			return nil
		}
	}
	if wide {
		return x.usageErrorf("-o %q: want wide, json or yaml", o)
	}
	return x.usageErrorf("-o %q: want json or yaml", o)
}

// printMessage prints m as indented protojson (fields in field order, map
// keys sorted, JSON names) or as YAML of the same.
func printMessage(w io.Writer, format string, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	// protojson varies its whitespace on purpose; fix it so output is
	// stable for diffs and scripts.
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	if format == outYAML {
		y, err := yaml.JSONToYAML(buf.Bytes())
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		_, err = w.Write(y)
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// table writes kubectl-style columns: upper-case headers, aligned with
// spaces, "<none>" for empty cells.
type table struct {
	tw     *tabwriter.Writer
	indent string
}

func newTable(w io.Writer, headers ...string) *table {
	return newIndentedTable(w, "", headers...)
}

// newIndentedTable starts every line with indent, for tables inside
// describe output.
func newIndentedTable(w io.Writer, indent string, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 3, ' ', 0), indent: indent}
	t.row(headers...)
	return t
}

func (t *table) row(cells ...string) {
	fmt.Fprint(t.tw, t.indent)
	for i, c := range cells {
		if c == "" {
			c = none
		}
		if i > 0 {
			fmt.Fprint(t.tw, "\t")
		}
		fmt.Fprint(t.tw, oneLine(c))
	}
	fmt.Fprint(t.tw, "\n")
}

func (t *table) flush() error { return t.tw.Flush() }

// oneLine keeps a cell on one line: messages from agents may hold newlines
// or tabs, which would break the columns.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// age is how long ago t was, kubectl-style ("45s", "3m", "2h", "5d");
// empty for no time.
func age(now time.Time, t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return duration.ShortHumanDuration(now.Sub(t.AsTime()))
}

// ago is age for sentences: "3m ago", "never" for no time.
func ago(now time.Time, t *timestamppb.Timestamp) string {
	if t == nil {
		return "never"
	}
	return age(now, t) + " ago"
}

// until is how far ahead t is: "in 23h", or "expired"; empty for no time.
func until(now time.Time, t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	d := t.AsTime().Sub(now)
	if d <= 0 {
		return "expired"
	}
	return "in " + duration.ShortHumanDuration(d)
}

// shortCommit is a commit's first 7 characters, as Git shows them, or a
// Helm or OCI revision's version and short digest.
func shortCommit(c string) string { return artifact.ShortCommit(c, 7) }

// formatLabels is "k=v,k2=v2" in key order, as -l and --labels take them.
func formatLabels(m map[string]string) string { return joinLabels(m, ",") }

// joinLabels is "k=v" pairs in key order, joined by sep.
func joinLabels(m map[string]string, sep string) string {
	keys := sortedKeys(m)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, sep)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// formatSelector shows a selector in the syntax `get clusters -l` takes.
func formatSelector(s *droverv1.LabelSelector) string {
	if s == nil {
		return ""
	}
	ls := &metav1.LabelSelector{MatchLabels: s.GetMatchLabels()}
	for _, e := range s.GetMatchExpressions() {
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: e.GetKey(), Operator: metav1.LabelSelectorOperator(e.GetOperator()), Values: e.GetValues(),
		})
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		// The hub validated it when it was stored; show what it holds.
		return fmt.Sprintf("%v", s)
	}
	if sel.Empty() {
		return "(everything)"
	}
	return sel.String()
}

// fraction is "n/total".
func fraction(n, total int32) string { return fmt.Sprintf("%d/%d", n, total) }

func sum(m map[string]int32) int32 {
	var n int32
	for _, v := range m {
		n += v
	}
	return n
}

// fields writes "Key:  value" lines, aligned, for describe.
type fields struct {
	tw     *tabwriter.Writer
	indent string
}

func newFields(w io.Writer) *fields {
	return &fields{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

// add writes one field; an empty value shows as "<none>", a value of
// several lines continues under the first.
func (f *fields) add(key, value string) {
	if value == "" {
		value = none
	}
	lines := strings.Split(value, "\n")
	fmt.Fprintf(f.tw, "%s%s:\t%s\n", f.indent, key, lines[0])
	for _, l := range lines[1:] {
		fmt.Fprintf(f.tw, "%s\t%s\n", f.indent, l)
	}
}

// section starts a heading whose fields are indented under it.
func (f *fields) section(title string) {
	fmt.Fprintf(f.tw, "%s:\n", title)
	f.indent = "  "
}

func (f *fields) endSection() { f.indent = "" }

func (f *fields) flush() error { return f.tw.Flush() }

// getList is the front every argument-less list command shares: its -o
// flag, one GET of path into resp, and json/yaml printing. It returns the
// output format and whether it printed resp already; the caller prints the
// table (and "wide") forms.
func (x *invocation) getList(ctx context.Context, args []string, wide bool, path string, resp proto.Message) (format string, printed bool, err error) {
	o := x.outputFlag(wide)
	if _, err := x.parseN(args, 0); err != nil {
		return "", false, err
	}
	if err := x.checkOutput(*o, wide); err != nil {
		return "", false, err
	}
	c, err := x.client()
	if err != nil {
		return "", false, err
	}
	if err := c.call(ctx, "GET", path, nil, nil, resp); err != nil {
		return "", false, err
	}
	if *o == outJSON || *o == outYAML {
		return *o, true, printMessage(x.out(), *o, resp)
	}
	return *o, false, nil
}
