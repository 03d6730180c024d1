package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterinfra/ci/engine"
)

func TestNodeKeyRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node.key")
	var out, errb bytes.Buffer
	if code := run([]string{"node", "-o", path}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode().Perm(), err)
	}
	k, err := engine.LoadNodeKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out.String()) != k.Public.String() {
		t.Fatalf("printed %q, key's public half is %s", out.String(), k.Public)
	}
	out.Reset()
	if code := run([]string{"public", path}, &out, &errb); code != exitOK || strings.TrimSpace(out.String()) != k.Public.String() {
		t.Fatalf("public: exit %d, %q", code, out.String())
	}
	// Never overwrite a key.
	if code := run([]string{"node", "-o", path}, &out, &errb); code != exitFailed {
		t.Fatalf("overwrite: exit %d", code)
	}
}

func TestRefusesReadableKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster.key")
	var out, errb bytes.Buffer
	if code := run([]string{"cluster", "-o", path}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if _, err := engine.LoadClusterKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run([]string{"public", path}, &out, &errb); code != exitFailed || !strings.Contains(errb.String(), "chmod 600") {
		t.Fatalf("world-readable key: exit %d, %q", code, errb.String())
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"node"}, &out, &errb); code != exitBadUsage {
		t.Fatalf("missing --out: exit %d", code)
	}
	out.Reset()
	if code := run([]string{"--help"}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "cluster key") {
		t.Fatalf("--help: exit %d %q", code, out.String())
	}
}
