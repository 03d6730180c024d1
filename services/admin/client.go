package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// ErrRemote is wrapped by every error reply of an endpoint; errors.As
// finds the *RemoteError with its status and code.
var ErrRemote = errors.New("admin: endpoint refused")

// RemoteError is an endpoint's error reply.
type RemoteError struct {
	Status int    // HTTP status
	Code   string // Error.Code: unauthorized, not_found, not_implemented, ...
	Msg    string
}

func (e *RemoteError) Error() string { return e.Msg }
func (e *RemoteError) Unwrap() error { return ErrRemote }

// Client calls one node's admin endpoint.
type Client struct {
	Addr  string // host:port or unix:/path, as in the node table
	token string
	hc    *http.Client
	base  string
}

// NewClient returns a client of the endpoint at addr; token is sent as the
// bearer token when not empty.
func NewClient(addr, token string) *Client {
	c := &Client{Addr: addr, token: token}
	tr := &http.Transport{MaxIdleConns: 4, IdleConnTimeout: 30 * time.Second}
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
		c.base = "http://unix"
	} else {
		c.base = "http://" + addr
	}
	c.hc = &http.Client{Transport: tr}
	return c
}

// Close drops the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint %s: %w", c.Addr, unwrapURL(err))
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e = Error{Error: strings.TrimSpace(string(b)), Code: http.StatusText(resp.StatusCode)}
		}
		return nil, &RemoteError{Status: resp.StatusCode, Code: e.Code, Msg: fmt.Sprintf("admin endpoint %s: %s", c.Addr, e.Error)}
	}
	return resp, nil
}

// unwrapURL drops url.Error's "Get \"http://unix/v1/...\":" which says
// nothing the caller's message does not.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Get decodes GET path's JSON reply into v.
func (c *Client) Get(ctx context.Context, path string, v any) error {
	return c.call(ctx, http.MethodGet, path, nil, v)
}

// Post sends body as JSON and decodes the reply into v.
func (c *Client) Post(ctx context.Context, path string, body, v any) error {
	return c.call(ctx, http.MethodPost, path, body, v)
}

func (c *Client) call(ctx context.Context, method, path string, body, v any) error {
	resp, err := c.request(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("admin endpoint %s: %s: %w", c.Addr, path, err)
	}
	return nil
}

// Text returns GET path's body (/readyz, /metrics) and its status; an
// error status is not an error here.
func (c *Client) Text(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return 0, "", err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("admin endpoint %s: %w", c.Addr, unwrapURL(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// ErrStalled: a watch stream carried nothing, not even a heartbeat, for
// longer than the caller allowed: the node is hung or cut off.
var ErrStalled = errors.New("admin: watch stream stalled")

// Watch streams /v1/watch?since=since: every event line after hello, until
// ctx ends, the stream ends, or no line (heartbeats included) comes within
// stall. A stream that ends is an error (io.ErrUnexpectedEOF); the caller
// resumes from the last transition it got, on this endpoint or another.
func (c *Client) Watch(ctx context.Context, since uint64, stall time.Duration) iter.Seq2[WatchEvent, error] {
	return func(yield func(WatchEvent, error) bool) {
		parent := ctx
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		resp, err := c.request(ctx, http.MethodGet, fmt.Sprintf("/v1/watch?since=%d", since), nil)
		if err != nil {
			yield(WatchEvent{}, err)
			return
		}
		defer resp.Body.Close()
		// The timer cancels the request, which unblocks the read.
		var stalled atomic.Bool
		timer := time.AfterFunc(stall, func() { stalled.Store(true); cancel() })
		defer timer.Stop()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 4096), MaxBody)
		for sc.Scan() {
			timer.Reset(stall)
			var ev WatchEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				yield(WatchEvent{}, fmt.Errorf("admin endpoint %s: watch line %q: %w", c.Addr, sc.Text(), err))
				return
			}
			if ev.Event == "error" {
				yield(ev, &RemoteError{Status: http.StatusOK, Code: ev.Code, Msg: fmt.Sprintf("admin endpoint %s: %s", c.Addr, ev.Error)})
				return
			}
			if !yield(ev, nil) {
				return
			}
		}
		err = sc.Err()
		switch {
		case parent.Err() != nil:
			err = parent.Err()
		case stalled.Load():
			err = fmt.Errorf("%w: nothing from %s for %v", ErrStalled, c.Addr, stall)
		case err == nil:
			err = fmt.Errorf("admin endpoint %s: watch: %w", c.Addr, io.ErrUnexpectedEOF)
		}
		yield(WatchEvent{}, err)
	}
}

// WaitStatus is the long poll GET /v1/status?after=after&wait=wait: the
// status once the node's view sequence passed after (Status.Seq), or the
// unchanged status when wait ran out first. A node without the long poll
// (an older build) answers at once, with Seq 0.
func (c *Client) WaitStatus(ctx context.Context, after uint64, wait time.Duration) (Status, error) {
	var st Status
	err := c.Get(ctx, longPollPath("/v1/status", after, wait), &st)
	return st, err
}

// WaitKeyServices is WaitStatus's GET /v1/keysvc?after=after&wait=wait.
func (c *Client) WaitKeyServices(ctx context.Context, after uint64, wait time.Duration) (KeyServices, error) {
	var ks KeyServices
	err := c.Get(ctx, longPollPath("/v1/keysvc", after, wait), &ks)
	return ks, err
}

func longPollPath(path string, after uint64, wait time.Duration) string {
	return fmt.Sprintf("%s?after=%d&wait=%dms", path, after, wait.Milliseconds())
}
