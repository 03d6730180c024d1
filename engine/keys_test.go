package engine_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterinfra/ci/engine"
)

// keyFiles writes one of each key file into dir, as cikey does.
func keyFiles(t *testing.T, dir string) (engine.ClusterKey, engine.NodeKey, engine.NodeKey) {
	t.Helper()
	ck, err := engine.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	nk1, err := engine.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	nk2, err := engine.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		engine.WriteClusterKeyFile(filepath.Join(dir, "cluster.key"), ck),
		engine.WriteNodeKeyFile(filepath.Join(dir, "node1.key"), nk1),
		engine.WritePublicKeyFile(filepath.Join(dir, "node2.pub"), nk2.Public),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return ck, nk1, nk2
}

// TestKeyFilesSayWhatTheyHold loads each kind of key file as every kind:
// the right loader succeeds, the others fail with ErrKeyFile and name what
// the file is.
func TestKeyFilesSayWhatTheyHold(t *testing.T) {
	dir := t.TempDir()
	ck, nk1, nk2 := keyFiles(t, dir)
	for _, file := range []string{"cluster.key", "node1.key", "node2.pub"} {
		path := filepath.Join(dir, file)
		_, errCluster := engine.LoadClusterKey(path)
		_, errNode := engine.LoadNodeKey(path)
		_, errPub := engine.LoadPublicKey(path)
		want := map[string][3]string{ // errors of LoadClusterKey, LoadNodeKey, LoadPublicKey
			"cluster.key": {"", path + " is a cluster key, not a node private key (cikey node -o FILE writes one)", path + " is a cluster key, not a node public key (cikey node prints one; cikey public NODEKEY prints it again)"},
			"node1.key":   {path + " is a node private key, not a cluster key (cikey cluster -o FILE writes one)", "", path + " is a node private key, not a node public key (cikey node prints one; cikey public NODEKEY prints it again)"},
			"node2.pub":   {path + " is a node public key, not a cluster key (cikey cluster -o FILE writes one)", path + " is a node public key, not a node private key (cikey node -o FILE writes one)", ""},
		}[file]
		for i, err := range []error{errCluster, errNode, errPub} {
			switch {
			case want[i] == "" && err != nil:
				t.Errorf("%s: loader %d: %v", file, i, err)
			case want[i] != "" && (!errors.Is(err, engine.ErrKeyFile) || err.Error() != engine.ErrKeyFile.Error()+": "+want[i]):
				t.Errorf("%s: loader %d:\n got %v\nwant %s", file, i, err, want[i])
			}
		}
	}
	if got, _ := engine.LoadClusterKey(filepath.Join(dir, "cluster.key")); got != ck {
		t.Error("cluster key differs after the round trip")
	}
	if got, _ := engine.LoadNodeKey(filepath.Join(dir, "node1.key")); got != nk1 {
		t.Error("node key differs after the round trip")
	}
	if got, _ := engine.LoadPublicKey(filepath.Join(dir, "node2.pub")); got != nk2.Public {
		t.Error("public key differs after the round trip")
	}
	// ReadKeyFile takes either secret, never a public key.
	if _, err := engine.ReadKeyFile(filepath.Join(dir, "node2.pub")); !errors.Is(err, engine.ErrKeyFile) || !strings.Contains(err.Error(), "is a node public key, not a node private key or a cluster key") {
		t.Errorf("ReadKeyFile of a public key: %v", err)
	}
	// The public key file is meant to be shared; secrets are not.
	if st, _ := os.Stat(filepath.Join(dir, "node2.pub")); st.Mode().Perm() != 0o644 {
		t.Errorf("public key file mode %#o", st.Mode().Perm())
	}
	if err := os.Chmod(filepath.Join(dir, "cluster.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := engine.LoadClusterKey(filepath.Join(dir, "cluster.key")); !errors.Is(err, engine.ErrKeyFile) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable cluster key: %v", err)
	}
}

// TestUntypedKeyFiles: files of the first format (hex alone) still load,
// except an owner-only one as a public key, which is a secret's look.
func TestUntypedKeyFiles(t *testing.T) {
	dir := t.TempDir()
	nk, err := engine.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "old.key")
	if err := engine.WriteKeyFile(secret, nk.Private); err != nil {
		t.Fatal(err)
	}
	if got, err := engine.LoadNodeKey(secret); err != nil || got != nk {
		t.Fatalf("old node key: %v", err)
	}
	if _, err := engine.LoadClusterKey(secret); err != nil {
		t.Fatalf("old key as a cluster key: %v", err)
	}
	if _, err := engine.LoadPublicKey(secret); !errors.Is(err, engine.ErrKeyFile) || !strings.Contains(err.Error(), "regenerate the keys with cikey") {
		t.Fatalf("owner-only untyped file as a public key: %v", err)
	}
	pub := filepath.Join(dir, "old.pub") // what "cikey node > old.pub" printed
	if err := os.WriteFile(pub, []byte(nk.Public.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := engine.LoadPublicKey(pub); err != nil || got != nk.Public {
		t.Fatalf("old public key file: %v", err)
	}
}

// TestParsePublicKey takes the hex of PublicKey.String and a public key
// file's text, refuses the text of a secret without quoting it.
func TestParsePublicKey(t *testing.T) {
	nk, err := engine.GenerateNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := engine.WritePublicKey(&text, nk.Public); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{nk.Public.String(), text.String()} {
		if got, err := engine.ParsePublicKey(in); err != nil || got != nk.Public {
			t.Errorf("ParsePublicKey(%q): %v", in, err)
		}
	}
	dir := t.TempDir()
	if err := engine.WriteNodeKeyFile(filepath.Join(dir, "n.key"), nk); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "n.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = engine.ParsePublicKey(string(b))
	if err == nil || err.Error() != "this is a node private key, not a node public key" {
		t.Errorf("private key text as a public key: %v", err)
	}
	for _, bad := range []string{"", "zz", "ci-node-public-key", "ci-node-public-key 1234", "ssh-ed25519 " + strings.Repeat("ab", 32), "a b c"} {
		if _, err := engine.ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) succeeded", bad)
		}
	}
}

// FuzzParsePublicKey: whatever ParsePublicKey accepts, WritePublicKey
// writes back in a form it reads as the same key.
func FuzzParsePublicKey(f *testing.F) {
	f.Add("ci-node-public-key " + strings.Repeat("0a", 32))
	f.Add(strings.Repeat("ff", 32) + "\n")
	f.Add("ci-cluster-key " + strings.Repeat("11", 32))
	f.Add("ci-node-public-key\t" + strings.Repeat("0A", 32) + "\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := engine.ParsePublicKey(s)
		if err != nil {
			return
		}
		var b bytes.Buffer
		if err := engine.WritePublicKey(&b, k); err != nil {
			t.Fatal(err)
		}
		if again, err := engine.ParsePublicKey(b.String()); err != nil || again != k {
			t.Fatalf("%q: written back as %q: %v", s, b.String(), err)
		}
	})
}

// securityFromKeyFiles is README.md's "Authentication and encryption"
// snippet, between the markers, as written there: this compiles it, and
// TestREADMEKeySnippet runs it and checks the README still says the same.
func securityFromKeyFiles(cfg *engine.Config) error {
	// README snippet begins
	ck, err := engine.LoadClusterKey("cluster.key")
	if err != nil {
		return err // names the file, and what it holds if it is another kind of key
	}
	nk, err := engine.LoadNodeKey("node1.key") // refused if group/world readable
	if err != nil {
		return err
	}
	pub2, err := engine.LoadPublicKey("node2.pub")
	if err != nil {
		return err
	}
	cfg.Insecure = false // instead of the open mode above
	cfg.Security = &engine.Security{
		Mode:        engine.SecurityEncrypt, // or SecurityAuthenticate on trusted networks
		NodeKey:     nk,
		PeerKeys:    map[engine.NodeNum]engine.PublicKey{2: pub2},
		ClusterKeys: []engine.ClusterKey{ck},
	}
	// README snippet ends
	return nil
}

func TestREADMEKeySnippet(t *testing.T) {
	dir := t.TempDir()
	ck, nk1, nk2 := keyFiles(t, dir)
	t.Chdir(dir)
	cfg := engine.DefaultConfig()
	if err := securityFromKeyFiles(&cfg); err != nil {
		t.Fatal(err)
	}
	s := cfg.Security
	if s.NodeKey != nk1 || s.PeerKeys[2] != nk2.Public || len(s.ClusterKeys) != 1 || s.ClusterKeys[0] != ck {
		t.Fatalf("snippet built %+v", s)
	}

	src := string(read(t, filepath.Join(testDir(t), "keys_test.go")))
	_, body, _ := strings.Cut(src, "\t// README snippet begins\n")
	body, _, _ = strings.Cut(body, "\t// README snippet ends\n")
	var want strings.Builder
	for line := range strings.Lines(body) {
		want.WriteString(strings.TrimPrefix(line, "\t"))
	}
	readme := string(read(t, filepath.Join(testDir(t), "..", "README.md")))
	if !strings.Contains(readme, "```go\n"+want.String()+"```\n") {
		t.Fatalf("README.md's key snippet is not this test's; it should read:\n%s", want.String())
	}
}

// testDir is the package directory, where go test starts (before Chdir).
var pkgDir, _ = os.Getwd()

func testDir(t *testing.T) string {
	t.Helper()
	if pkgDir == "" {
		t.Fatal("no working directory")
	}
	return pkgDir
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
