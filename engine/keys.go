package engine

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/flynn/noise"
)

// PublicKey is a node's static Curve25519 public key, listed in the node
// table of every member.
type PublicKey [32]byte

// NodeKey is a node's static key pair. The private half never leaves the
// node's key file.
type NodeKey struct {
	Private [32]byte
	Public  PublicKey
}

// ClusterKey is the pre-shared key every member holds. It is mixed into
// every handshake, so a machine with a stolen node key but not the current
// cluster key still cannot join.
type ClusterKey [32]byte

// ID names a cluster key on the wire without revealing it, so that during a
// rotation the acceptor knows which of its accepted keys the dialler used.
func (k ClusterKey) ID() uint32 {
	sum := sha256.Sum256(append([]byte("ics cluster key id\x00"), k[:]...))
	return binary.BigEndian.Uint32(sum[:4])
}

// ErrKeyFile is returned for a key file that is missing, malformed or
// readable by others.
var ErrKeyFile = errors.New("ics: bad key file")

// GenerateNodeKey makes a new static key pair.
func GenerateNodeKey() (NodeKey, error) {
	kp, err := noise.DH25519.GenerateKeypair(rand.Reader)
	if err != nil {
		return NodeKey{}, err
	}
	var k NodeKey
	copy(k.Private[:], kp.Private)
	copy(k.Public[:], kp.Public)
	return k, nil
}

// NodeKeyFromPrivate rebuilds a key pair from its private half.
func NodeKeyFromPrivate(priv [32]byte) (NodeKey, error) {
	kp, err := noise.DH25519.GenerateKeypair(&fixedReader{b: priv[:]})
	if err != nil {
		return NodeKey{}, err
	}
	var k NodeKey
	copy(k.Private[:], kp.Private)
	copy(k.Public[:], kp.Public)
	return k, nil
}

// fixedReader feeds a known private key to GenerateKeypair, which derives
// the public half from whatever 32 bytes it reads.
type fixedReader struct{ b []byte }

func (r *fixedReader) Read(p []byte) (int, error) {
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// GenerateClusterKey makes a new random cluster key.
func GenerateClusterKey() (ClusterKey, error) {
	var k ClusterKey
	_, err := rand.Read(k[:])
	return k, err
}

func (k PublicKey) String() string { return hex.EncodeToString(k[:]) }

// Key files. Each is one line that says what it holds, then the key in hex:
//
//	ci-node-private-key 9f0c...   a node's private key (cikey node -o); mode 0600
//	ci-node-public-key 3a7b...    its public key, for the other members' tables
//	ci-cluster-key 51e2...        the cluster key every member shares; mode 0600
//
// so that one kind of key cannot be loaded as another: the error names
// what the file holds. Files of the first format, 64 hex digits alone, still
// load as whatever the caller asks for (they cannot be told apart), except
// as a public key when the file is private to its owner, which is what a
// secret key file looks like (see LoadPublicKey).
type keyKind int

const (
	kindUntyped keyKind = iota // the first format: hex alone
	kindNodePrivate
	kindNodePublic
	kindCluster
)

var keyKinds = [...]struct{ tag, what string }{
	kindUntyped:     {"", "key in the old untyped format"},
	kindNodePrivate: {"ci-node-private-key", "node private key"},
	kindNodePublic:  {"ci-node-public-key", "node public key"},
	kindCluster:     {"ci-cluster-key", "cluster key"},
}

func (k keyKind) String() string { return keyKinds[k].what }

// parseKeyText reads a key file's text: its kind and its 32 bytes. Errors
// never quote the text, which may be a secret.
func parseKeyText(text string) (keyKind, [32]byte, error) {
	var key [32]byte
	fields := strings.Fields(text)
	kind, digits := kindUntyped, ""
	switch len(fields) {
	case 1:
		digits = fields[0]
	case 2:
		kind = -1
		for k, v := range keyKinds {
			if v.tag != "" && v.tag == fields[0] {
				kind = keyKind(k)
			}
		}
		if kind < 0 {
			return 0, key, fmt.Errorf("not a CI key file: it starts with %q, not ci-node-private-key, ci-node-public-key or ci-cluster-key", truncate(fields[0], 24))
		}
		digits = fields[1]
	default:
		return 0, key, fmt.Errorf("not a CI key file: want one line, the key's kind and 64 hex digits (%d words)", len(fields))
	}
	if err := parseHex32(digits, key[:]); err != nil {
		return 0, key, fmt.Errorf("%s: %v", kind, err)
	}
	return kind, key, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// ParsePublicKey reads a public key: the hex form String writes, or the
// text of a public key file.
func ParsePublicKey(s string) (PublicKey, error) {
	kind, k, err := parseKeyText(s)
	if err != nil {
		return PublicKey{}, err
	}
	if kind != kindNodePublic && kind != kindUntyped {
		return PublicKey{}, fmt.Errorf("this is a %s, not a node public key", kind)
	}
	return PublicKey(k), nil
}

func parseHex32(s string, dst []byte) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("want 64 hex digits (32 bytes), got %d characters", len(s))
	}
	copy(dst, b)
	return nil
}

// WriteNodeKeyFile writes k's private half to a new node private key file
// only its owner can read. It refuses to overwrite an existing file.
func WriteNodeKeyFile(path string, k NodeKey) error {
	return writeKey(path, kindNodePrivate, k.Private, 0o600)
}

// WriteClusterKeyFile writes k to a new cluster key file only its owner
// can read. It refuses to overwrite an existing file.
func WriteClusterKeyFile(path string, k ClusterKey) error {
	return writeKey(path, kindCluster, k, 0o600)
}

// WritePublicKeyFile writes k to a new public key file, readable by all.
// It refuses to overwrite an existing file.
func WritePublicKeyFile(path string, k PublicKey) error {
	return writeKey(path, kindNodePublic, k, 0o644)
}

// WritePublicKey writes k as a public key file's text, the form cikey
// prints and LoadPublicKey and ParsePublicKey read.
func WritePublicKey(w io.Writer, k PublicKey) error {
	_, err := fmt.Fprintf(w, "%s %s\n", keyKinds[kindNodePublic].tag, k)
	return err
}

// WriteKeyFile writes a 32-byte secret to a new file only its owner can
// read, in the untyped format (hex alone) of earlier versions, which the
// loaders accept as any kind of key. WriteNodeKeyFile and
// WriteClusterKeyFile write files that say what they hold.
func WriteKeyFile(path string, secret [32]byte) error {
	return writeKey(path, kindUntyped, secret, 0o600)
}

func writeKey(path string, kind keyKind, key [32]byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	line := hex.EncodeToString(key[:])
	if tag := keyKinds[kind].tag; tag != "" {
		line = tag + " " + line
	}
	if _, err := fmt.Fprintln(f, line); err != nil {
		f.Close()
		return fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	return f.Close()
}

// readKey reads a key file that must hold one of the kinds wanted (or be
// untyped). A secret file its group or others may read is refused: a
// leaked node or cluster key lets anyone on the network join the cluster.
// The kind is checked first, so that the error for a wrong file says what
// it is.
func readKey(path string, want ...keyKind) (keyKind, os.FileMode, [32]byte, error) {
	var k [32]byte
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, k, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	if !st.Mode().IsRegular() {
		return 0, 0, k, fmt.Errorf("%w: %s is not a regular file", ErrKeyFile, path)
	}
	if st.Size() > 4096 {
		return 0, 0, k, fmt.Errorf("%w: %s: %d bytes is too large for a key file", ErrKeyFile, path, st.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, k, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	kind, k, err := parseKeyText(string(b))
	if err != nil {
		return 0, 0, k, fmt.Errorf("%w: %s: %v", ErrKeyFile, path, err)
	}
	if kind != kindUntyped && !slices.Contains(want, kind) {
		var names []string
		for _, w := range want {
			names = append(names, w.String())
		}
		hint := ""
		if len(want) == 1 {
			hint = keyHint[want[0]]
		}
		return 0, 0, [32]byte{}, fmt.Errorf("%w: %s is a %s, not a %s%s", ErrKeyFile, path, kind, strings.Join(names, " or a "), hint)
	}
	perm := st.Mode().Perm()
	if !slices.Contains(want, kindNodePublic) && perm&0o077 != 0 { // a secret
		return 0, 0, [32]byte{}, fmt.Errorf("%w: %s has mode %#o, readable by group or others; run: chmod 600 %s", ErrKeyFile, path, perm, path)
	}
	return kind, perm, k, nil
}

// keyHint says where the right file comes from.
var keyHint = [...]string{
	kindNodePrivate: " (cikey node -o FILE writes one)",
	kindNodePublic:  " (cikey node prints one; cikey public NODEKEY prints it again)",
	kindCluster:     " (cikey cluster -o FILE writes one)",
}

// ReadKeyFile reads the 32 bytes of a secret key file, a node's private
// key or the cluster key, refusing one readable by group or others.
// LoadNodeKey and LoadClusterKey also refuse the other kind of secret.
func ReadKeyFile(path string) ([32]byte, error) {
	_, _, k, err := readKey(path, kindNodePrivate, kindCluster)
	return k, err
}

// LoadNodeKey reads a node's private key file and derives its public key.
func LoadNodeKey(path string) (NodeKey, error) {
	_, _, priv, err := readKey(path, kindNodePrivate)
	if err != nil {
		return NodeKey{}, err
	}
	return NodeKeyFromPrivate(priv)
}

// LoadClusterKey reads a cluster key file.
func LoadClusterKey(path string) (ClusterKey, error) {
	_, _, k, err := readKey(path, kindCluster)
	return ClusterKey(k), err
}

// LoadPublicKey reads a node's public key file, as cikey writes it, or the
// hex alone that earlier versions printed. An untyped file that only its
// owner may read is refused: that is how a secret key file of the old
// format looks, and taking a private key for a public one would publish it
// in every log line that names the peer's key.
func LoadPublicKey(path string) (PublicKey, error) {
	kind, perm, k, err := readKey(path, kindNodePublic)
	if err != nil {
		return PublicKey{}, err
	}
	if kind == kindUntyped && perm&0o077 == 0 {
		return PublicKey{}, fmt.Errorf("%w: %s is an untyped key only its owner may read (mode %#o): a secret key of the old format? Give the public key file, or regenerate the keys with cikey, which writes files that say what they hold", ErrKeyFile, path, perm)
	}
	return PublicKey(k), nil
}
