package engine

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
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

// ParsePublicKey reads the hex form String writes.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	return k, parseHex32(strings.TrimSpace(s), k[:])
}

func parseHex32(s string, dst []byte) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("want 64 hex digits (32 bytes), got %d characters", len(s))
	}
	copy(dst, b)
	return nil
}

// WriteKeyFile writes a 32-byte secret as hex to a new file only its owner
// can read. It refuses to overwrite an existing file.
func WriteKeyFile(path string, secret [32]byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	if _, err := fmt.Fprintln(f, hex.EncodeToString(secret[:])); err != nil {
		f.Close()
		return fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	return f.Close()
}

// ReadKeyFile reads a secret written by WriteKeyFile. A file that its
// group or others may read is refused: a leaked node or cluster key lets
// anyone on the network join the cluster.
func ReadKeyFile(path string) ([32]byte, error) {
	var k [32]byte
	st, err := os.Stat(path)
	if err != nil {
		return k, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	if !st.Mode().IsRegular() {
		return k, fmt.Errorf("%w: %s is not a regular file", ErrKeyFile, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return k, fmt.Errorf("%w: %s has mode %#o, readable by group or others; run: chmod 600 %s", ErrKeyFile, path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return k, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	if err := parseHex32(strings.TrimSpace(string(b)), k[:]); err != nil {
		return k, fmt.Errorf("%w: %s: %v", ErrKeyFile, path, err)
	}
	return k, nil
}

// LoadNodeKey reads a node's private key file and derives its public key.
func LoadNodeKey(path string) (NodeKey, error) {
	priv, err := ReadKeyFile(path)
	if err != nil {
		return NodeKey{}, err
	}
	return NodeKeyFromPrivate(priv)
}

// LoadClusterKey reads a cluster key file.
func LoadClusterKey(path string) (ClusterKey, error) {
	k, err := ReadKeyFile(path)
	return ClusterKey(k), err
}
