package store

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/api/validate/content"
)

var (
	marshalJSON = protojson.MarshalOptions{}
	// Rows written by a newer hub during a rolling upgrade may carry fields
	// this one does not know.
	unmarshalJSON = protojson.UnmarshalOptions{DiscardUnknown: true}
)

func toJSON(m proto.Message) ([]byte, error) {
	return marshalJSON.Marshal(m)
}

func fromJSON(b []byte, m proto.Message) error {
	return unmarshalJSON.Unmarshal(b, m)
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// tsOpt converts a nullable column.
func tsOpt(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

// timeOpt converts an optional proto timestamp to a nullable column.
func timeOpt(t *timestamppb.Timestamp) *time.Time {
	if t == nil {
		return nil
	}
	v := t.AsTime()
	return &v
}

// labelsJSON encodes labels for a jsonb column; nil becomes {}.
func labelsJSON(labels map[string]string) ([]byte, error) {
	if labels == nil {
		return []byte("{}"), nil
	}
	return json.Marshal(labels)
}

func labelsFromJSON(b []byte) (map[string]string, error) {
	labels := map[string]string{}
	if len(b) == 0 {
		return labels, nil
	}
	if err := json.Unmarshal(b, &labels); err != nil {
		return nil, fmt.Errorf("decode labels: %w", err)
	}
	return labels, nil
}

// validateLabels checks keys and values with Kubernetes' rules. field is
// the input's name, e.g. "labels" or "set".
func validateLabels(field string, labels map[string]string) error {
	for k, v := range labels {
		if errs := content.IsLabelKey(k); len(errs) > 0 {
			return invalid(fmt.Sprintf("%s[%q]", field, k), "key: %s", strings.Join(errs, "; "))
		}
		if errs := content.IsLabelValue(v); len(errs) > 0 {
			return invalid(fmt.Sprintf("%s[%q]", field, k), "value %q: %s", v, strings.Join(errs, "; "))
		}
	}
	return nil
}

// maxNameLen keeps cluster and application names usable as label values,
// Kubernetes object names and certificate common names (RFC 5280: 64).
const maxNameLen = 63

// validateName checks a cluster or application name: a DNS-1123 subdomain
// of at most 63 characters.
func validateName(field, name string) error {
	if name == "" {
		return invalid(field, "must not be empty")
	}
	if len(name) > maxNameLen {
		return invalid(field, "%q is longer than %d characters", name, maxNameLen)
	}
	if errs := content.IsDNS1123Subdomain(name); len(errs) > 0 {
		return invalid(field, "%q: %s", name, strings.Join(errs, "; "))
	}
	return nil
}

// cleanText makes text from outside storable: PostgreSQL text and jsonb
// refuse NUL characters and invalid UTF-8, and a refused status would be
// retried forever. It also bounds the length (in bytes, cut at a rune
// boundary) when maxBytes > 0.
func cleanText(s string, maxBytes int) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if maxBytes > 0 && len(s) > maxBytes {
		cut := maxBytes
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// needsCleaning reports whether cleanText would change s (ignoring
// length), so clean input is not copied.
func needsCleaning(s string) bool {
	return strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s)
}
