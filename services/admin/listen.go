package admin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/clusterinfra/ci/clms"
)

// UnixPrefix marks an admin address that is a Unix socket path.
const UnixPrefix = "unix:"

// IsLocal reports whether addr is a place only this machine's users can
// reach: a Unix socket, a loopback IP, or "localhost". Every other address
// (a LAN IP, a host name, ":port" which is every interface) needs a token.
func IsLocal(addr string) bool {
	if strings.HasPrefix(addr, UnixPrefix) {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckAddr reports what is wrong with an admin address, or nil.
func CheckAddr(addr string) error {
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		if path == "" || !filepath.IsAbs(path) {
			return fmt.Errorf("%w: %q: a unix socket needs an absolute path, as unix:/run/ci/admin.sock", ErrConfig, addr)
		}
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q: want host:port or unix:/path", ErrConfig, addr)
	}
	if port == "" {
		return fmt.Errorf("%w: %q has no port", ErrConfig, addr)
	}
	return nil
}

// listen opens addr: TCP for host:port, a Unix socket for unix:/path.
func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		return listenUnix(path)
	}
	return net.Listen("tcp", addr)
}

// listenUnix creates the socket at path with mode 0600 and no moment at
// which anyone else could connect: it binds in a fresh directory of mode
// 0700 beside path, chmods the socket, then renames it into place (the
// listening socket follows its inode). A stale socket at path, one nobody
// listens on, is replaced; a live one or any other file is an error.
func listenUnix(path string) (net.Listener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".admin-sock-")
	if err != nil {
		return nil, fmt.Errorf("admin: creating %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	// The listener would unlink tmp on Close, which is gone by then;
	// unixListener removes path instead.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	return &unixListener{UnixListener: l, path: path}, nil
}

// unixListener removes its socket file on Close.
type unixListener struct {
	*net.UnixListener
	path string
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func removeStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	if st.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%w: %s exists and is not a socket", ErrConfig, path)
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s: another process is listening on it", ErrConfig, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("admin: probing the old socket %s: %w", path, err)
	}
	return os.Remove(path)
}

// MaxTokenSize bounds a token file: a token is a line, not a document.
const MaxTokenSize = 4096

// ReadToken reads a bearer token file: one line, mode 0600 (readable by
// its owner only, as a key file). Anyone who can read the token can shut
// the cluster down.
func ReadToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: token file: %w", ErrConfig, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: token file: %w", ErrConfig, err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%w: token file %s is readable by group or others (mode %04o): run chmod 600 %s", ErrConfig, path, perm, path)
	}
	buf := make([]byte, MaxTokenSize+1)
	n, err := f.Read(buf)
	if err != nil && n == 0 {
		return "", fmt.Errorf("%w: token file %s: %w", ErrConfig, path, err)
	}
	if n > MaxTokenSize {
		return "", fmt.Errorf("%w: token file %s is over %d bytes", ErrConfig, path, MaxTokenSize)
	}
	tok := strings.TrimSpace(string(buf[:n]))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("%w: token file %s must hold one token, a line without spaces", ErrConfig, path)
	}
	return tok, nil
}

// AddrFor is node e's admin address: the node table's, or the default,
// DefaultPort on the node's ICS host when that is a loopback address
// (several nodes on one machine, each on its own 127.0.0.x), else on
// 127.0.0.1. cinode listens there and the cluster command looks there.
func AddrFor(e clms.NodeEntry) string {
	if e.Admin != "" {
		return e.Admin
	}
	if host, _, err := net.SplitHostPort(e.Address); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return net.JoinHostPort(host, DefaultPort)
		}
	}
	return net.JoinHostPort("127.0.0.1", DefaultPort)
}
