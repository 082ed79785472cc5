package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// apiRequestTimeout bounds one call of the admin API. A hub that does not
// answer fails the call instead of hanging the test; polls call again.
const apiRequestTimeout = 30 * time.Second

// apiClient calls the hub's JSON admin API as scripts and droverctl do.
type apiClient struct {
	base  string // e.g. http://127.0.0.1:8080
	token string
}

// call sends in (unless nil) with method to path and decodes the answer
// into out (unless nil). A status other than 2xx is an error with the
// response body. Every call has its own apiRequestTimeout within ctx.
func (c *apiClient) call(ctx context.Context, method, path string, in, out proto.Message) error {
	ctx, cancel := context.WithTimeout(ctx, apiRequestTimeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := protojson.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))
	}
	if out != nil {
		if err := protojson.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

// do is call for steps that must succeed: an error fails tb, which must
// be the test or subtest running the caller.
func (c *apiClient) do(tb testing.TB, method, path string, in, out proto.Message) {
	tb.Helper()
	if err := c.call(tb.Context(), method, path, in, out); err != nil {
		tb.Fatal(err)
	}
}
