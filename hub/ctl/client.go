package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/internal/version"
)

// requestTimeout bounds one API call, so a hub that accepts connections
// but never answers does not hang scripts. Refresh (a Git ls-remote) is
// the slowest call and takes seconds.
const requestTimeout = 2 * time.Minute

// maxResponseBytes bounds what is read of one response.
const maxResponseBytes = 64 << 20

// APIError is an error answer of the hub: its HTTP status and the
// {"code", "message"} body the JSON gateway sends.
type APIError struct {
	HTTPStatus int
	// Code is the gRPC status code the hub answered with.
	Code    int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// client calls the hub's JSON API.
type client struct {
	base  *url.URL
	token string
	http  *http.Client
}

func newClient(base *url.URL, token string, hc *http.Client) *client {
	if hc == nil {
		hc = &http.Client{Timeout: requestTimeout}
	}
	return &client{base: base, token: token, http: hc}
}

// apiPath joins escaped path segments under /api/v1/.
func apiPath(segments ...string) string {
	var b strings.Builder
	b.WriteString("/api/v1")
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// call sends body (nil for none) to path with method and decodes the answer
// into out. Fields out does not know are skipped, so an older droverctl
// works with a newer hub.
func (c *client) call(ctx context.Context, method, path string, query url.Values, body, out proto.Message) error {
	u := *c.base
	u.Path = c.base.Path + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := protojson.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "droverctl/"+version.Version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// url.Error repeats the method and URL; say it once, plainly.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("reach the hub at %s: %w", c.base.Redacted(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("read the hub's answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return apiError(resp, data)
	}
	if out == nil {
		return nil
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode the hub's answer to %s %s: %w", method, path, err)
	}
	return nil
}

// apiError reads the gateway's error body; anything else (a proxy's error
// page) is reported by its HTTP status alone.
func apiError(resp *http.Response, data []byte) error {
	var body struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Message == "" {
		body.Message = fmt.Sprintf("the hub answered %s", resp.Status)
	}
	return &APIError{HTTPStatus: resp.StatusCode, Code: body.Code, Message: body.Message}
}

// isNotFound reports whether err is the hub saying the object does not
// exist.
func isNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.HTTPStatus == http.StatusNotFound
}
