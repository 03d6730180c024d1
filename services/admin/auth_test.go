package admin_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/admin/admintest"
)

func writeToken(t *testing.T, mode os.FileMode, tok string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(tok), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigRefused(t *testing.T) {
	src, err := admintest.New("test", 1, []clms.NodeNum{1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  admin.Config
		want string
	}{
		{"all interfaces without a token", admin.Config{Addr: ":7180"}, "not a loopback address"},
		{"LAN address without a token", admin.Config{Addr: "10.1.2.3:7180"}, "give a token file"},
		{"host name without a token", admin.Config{Addr: "node1.example:7180"}, "give a token file"},
		{"token readable by others", admin.Config{Addr: ":0", TokenFile: writeToken(t, 0o644, "s3cret")}, "mode 0644): run chmod 600"},
		{"empty token", admin.Config{Addr: ":0", TokenFile: writeToken(t, 0o600, "\n")}, "one token"},
		{"missing token", admin.Config{Addr: ":0", TokenFile: "/nonexistent/token"}, "no such file"},
		{"no port", admin.Config{Addr: "127.0.0.1"}, "want host:port"},
		{"relative socket", admin.Config{Addr: "unix:admin.sock"}, "absolute path"},
	} {
		_, err := admin.New(c.cfg, src)
		if !errors.Is(err, admin.ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrConfig with %q", c.name, err, c.want)
		}
	}
	for addr, local := range map[string]bool{"127.0.0.1:1": true, "127.0.0.3:1": true, "[::1]:1": true, "localhost:1": true,
		"unix:/x": true, ":1": false, "0.0.0.0:1": false, "192.168.1.1:1": false, "example.com:1": false} {
		if admin.IsLocal(addr) != local {
			t.Errorf("IsLocal(%s) = %v", addr, !local)
		}
	}
}

// TestTokenRequired: bound to every interface, the endpoint refuses every
// request without the token (401) or with a wrong one (403), mutating calls
// included, and serves them with it.
func TestTokenRequired(t *testing.T) {
	asked := make(chan string, 1)
	e := start(t, admin.Config{Addr: ":0", TokenFile: writeToken(t, 0o600, "s3cret\n"), Shutdown: func(r string) { asked <- r }})
	for _, c := range []struct{ method, path, token string }{
		{"GET", "/v1/status", ""}, {"GET", "/v1/status?after=0&wait=1s", ""}, {"GET", "/v1/keysvc?after=0&wait=1s", ""}, {"GET", "/metrics", ""}, {"GET", "/healthz", ""}, {"GET", "/debug/pprof/", ""},
		{"POST", "/v1/shutdown", ""}, {"POST", "/v1/signal", ""}, {"POST", "/v1/move", ""},
	} {
		code, body := e.do(t, c.method, c.path, "", "")
		if code != 401 || !strings.Contains(body, `"unauthorized"`) || !strings.Contains(body, "Authorization: Bearer") {
			t.Errorf("%s %s without a token: %d %s", c.method, c.path, code, body)
		}
		code, body = e.do(t, c.method, c.path, "wrong", "")
		if code != 403 || !strings.Contains(body, `"forbidden"`) {
			t.Errorf("%s %s with a wrong token: %d %s", c.method, c.path, code, body)
		}
	}
	if len(asked) != 0 {
		t.Fatal("shutdown ran without the token")
	}
	if code, _ := e.do(t, "GET", "/v1/status", "s3cret", ""); code != 200 {
		t.Fatalf("with the token: %d", code)
	}
	if code, body := e.do(t, "POST", "/v1/shutdown", "s3cret", ""); code != 202 || <-asked != "admin request" {
		t.Fatalf("shutdown with the token: %d %s", code, body)
	}
}

func TestUnixSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")
	// A stale socket from a killed process: nobody listens on it.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	e := start(t, admin.Config{Addr: "unix:" + path})
	st, err := os.Stat(path)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v: %v", st.Mode(), err)
	}
	if code, body := e.do(t, "GET", "/healthz", "", ""); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if e.srv.Addr() != "unix:"+path {
		t.Fatalf("Addr %s", e.srv.Addr())
	}
	src, _ := admintest.New("test", 2, []clms.NodeNum{1, 2})
	second, err := admin.New(admin.Config{Addr: "unix:" + path}, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Start(); !errors.Is(err, admin.ErrConfig) || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("second server on a live socket: %v", err)
	}
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, nil, 0o600)
	third, _ := admin.New(admin.Config{Addr: "unix:" + plain}, src)
	if err := third.Start(); !errors.Is(err, admin.ErrConfig) || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("over a plain file: %v", err)
	}
	if err := e.srv.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 { // only "file": no temporary directory left
		t.Fatalf("left in %s: %v", dir, ents)
	}
}

func TestAddrFor(t *testing.T) {
	for _, c := range []struct {
		e    clms.NodeEntry
		want string
	}{
		{clms.NodeEntry{Address: "127.0.0.3:7100", Admin: "unix:/run/a.sock"}, "unix:/run/a.sock"},
		{clms.NodeEntry{Address: "127.0.0.3:7100"}, "127.0.0.3:" + admin.DefaultPort},
		{clms.NodeEntry{Address: "10.0.0.3:7100"}, "127.0.0.1:" + admin.DefaultPort},
		{clms.NodeEntry{Address: "node3.example:7100"}, "127.0.0.1:" + admin.DefaultPort},
	} {
		if got := admin.AddrFor(c.e); got != c.want {
			t.Errorf("%+v: %s, want %s", c.e, got, c.want)
		}
	}
}
