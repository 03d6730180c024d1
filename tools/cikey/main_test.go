package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
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
	// What it prints is a public key file: "cikey node -o n.key > n.pub".
	if want := "ci-node-public-key " + k.Public.String() + "\n"; out.String() != want {
		t.Fatalf("printed %q, want %q", out.String(), want)
	}
	pubPath := filepath.Join(dir, "node.pub")
	if err := os.WriteFile(pubPath, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if pub, err := engine.LoadPublicKey(pubPath); err != nil || pub != k.Public {
		t.Fatalf("LoadPublicKey of what cikey printed: %v", err)
	}
	out.Reset()
	if code := run([]string{"public", path}, &out, &errb); code != exitOK || out.String() != "ci-node-public-key "+k.Public.String()+"\n" {
		t.Fatalf("public: exit %d, %q", code, out.String())
	}
	// The private key file says what it is.
	if b, _ := os.ReadFile(path); !strings.HasPrefix(string(b), "ci-node-private-key ") {
		t.Fatalf("node key file starts %q", string(b)[:min(len(b), 20)])
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
	// A cluster key is not a node key: cikey public says what it is.
	errb.Reset()
	if code := run([]string{"public", path}, &out, &errb); code != exitFailed || !strings.Contains(errb.String(), path+" is a cluster key, not a node private key") {
		t.Fatalf("public of a cluster key: exit %d, %q", code, errb.String())
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := engine.LoadClusterKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable cluster key: %v", err)
	}
	nodeKey := filepath.Join(filepath.Dir(path), "node.key")
	if code := run([]string{"node", "-o", nodeKey}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if err := os.Chmod(nodeKey, 0o640); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run([]string{"public", nodeKey}, &out, &errb); code != exitFailed || !strings.Contains(errb.String(), "chmod 600") {
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

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, enginetest.LeakOptions()...) }
