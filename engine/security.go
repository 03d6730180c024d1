package engine

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"

	"github.com/flynn/noise"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/clusterinfra/ci/framing"
)

// SecurityMode says what the handshake protects.
type SecurityMode uint8

const (
	// SecurityAuthenticate authenticates both ends of every connection;
	// frames then travel in clear. For trusted networks: it keeps strangers
	// and misconfigured nodes out, not an attacker who can rewrite traffic.
	SecurityAuthenticate SecurityMode = 1
	// SecurityEncrypt also encrypts and authenticates every byte after the
	// handshake (ChaCha20-Poly1305).
	SecurityEncrypt SecurityMode = 2
)

func (m SecurityMode) String() string {
	switch m {
	case SecurityAuthenticate:
		return "authenticate"
	case SecurityEncrypt:
		return "encrypt"
	}
	return fmt.Sprintf("security(%d)", uint8(m))
}

// Security configures mutual authentication of ICS connections with the
// Noise protocol framework: pattern KK (each end knows the other's static
// key from the node table) with the cluster key as pre-shared key. A
// connection whose dialler lacks the cluster key, holds another node's key,
// or replays a recorded handshake is closed before any service sees a byte.
type Security struct {
	Mode     SecurityMode
	NodeKey  NodeKey               // this node's static key pair
	PeerKeys map[NodeNum]PublicKey // every other member's public key
	// ClusterKeys are the accepted cluster keys; the first is the one this
	// node dials with. Listing two is how a key is rotated without a
	// restart (see Node.SetClusterKeys).
	ClusterKeys []ClusterKey
}

func (s *Security) validate() error {
	if s.Mode != SecurityAuthenticate && s.Mode != SecurityEncrypt {
		return fmt.Errorf("%w: Security.Mode %d: want SecurityAuthenticate or SecurityEncrypt", ErrBadConfig, s.Mode)
	}
	if s.NodeKey.Public == (PublicKey{}) {
		return fmt.Errorf("%w: Security.NodeKey is not set", ErrBadConfig)
	}
	if len(s.ClusterKeys) == 0 {
		return fmt.Errorf("%w: Security.ClusterKeys is empty", ErrBadConfig)
	}
	for num, k := range s.PeerKeys {
		if k == (PublicKey{}) {
			return fmt.Errorf("%w: Security.PeerKeys[%d] is an empty public key", ErrBadConfig, num)
		}
	}
	return nil
}

// clone copies s so that the node's view cannot be changed behind its back.
func (s *Security) clone() *Security {
	c := *s
	c.PeerKeys = make(map[NodeNum]PublicKey, len(s.PeerKeys))
	for k, v := range s.PeerKeys {
		c.PeerKeys[k] = v
	}
	c.ClusterKeys = append([]ClusterKey(nil), s.ClusterKeys...)
	return &c
}

var cipherSuite = noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashBLAKE2s)

// confirmMagic is what the dialler's third message encrypts: proof that it
// derived the session keys, which a replayed first message cannot give.
var confirmMagic = []byte("ics-confirm-v1")

// Errors of the secure handshake; all wrap ErrAuth.
var (
	errNoAuth        = fmt.Errorf("%w: peer did not authenticate", ErrAuth)
	errModeMismatch  = fmt.Errorf("%w: security modes differ", ErrAuth)
	errUnknownKey    = fmt.Errorf("%w: unknown cluster key", ErrAuth)
	errNoPeerKey     = fmt.Errorf("%w: no public key for node", ErrAuth)
	errHandshake     = fmt.Errorf("%w: handshake failed (wrong cluster key or node key)", ErrAuth)
	errBadConfirm    = fmt.Errorf("%w: handshake not confirmed (replayed?)", ErrAuth)
	errBadAuthFormat = fmt.Errorf("%w: malformed authentication blob", ErrAuth)
)

// authBlob layout inside framing.Hello.Auth: mode (1), cluster key id (4,
// big-endian), Noise handshake message.
const authHeader = 5

func appendAuth(b []byte, mode SecurityMode, keyID uint32, msg []byte) []byte {
	b = append(b, byte(mode))
	b = binary.BigEndian.AppendUint32(b, keyID)
	return append(b, msg...)
}

func parseAuth(auth []byte) (SecurityMode, uint32, []byte, error) {
	if len(auth) < authHeader {
		return 0, 0, nil, errBadAuthFormat
	}
	return SecurityMode(auth[0]), binary.BigEndian.Uint32(auth[1:5]), auth[authHeader:], nil
}

// prologue is the hello as signed: every field but the auth blob, bound
// into the handshake so that none of them can be altered in flight.
func prologue(h framing.Hello) []byte {
	h.Auth = nil
	b, _ := framing.AppendHello(nil, &h)
	return b
}

// session is a finished handshake's cipher states.
type session struct {
	tx, rx *noise.CipherState
}

// initiate starts the dialler's side: the first Noise message, to send as
// hello's auth blob, and the state to finish with.
func (s *Security) initiate(to NodeNum, hello framing.Hello) (*noise.HandshakeState, []byte, error) {
	pub, ok := s.PeerKeys[to]
	if !ok {
		return nil, nil, fmt.Errorf("%w %d", errNoPeerKey, to)
	}
	ck := s.ClusterKeys[0]
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:           cipherSuite,
		Pattern:               noise.HandshakeKK,
		Initiator:             true,
		Prologue:              prologue(hello),
		PresharedKey:          ck[:],
		PresharedKeyPlacement: 2,
		StaticKeypair:         noise.DHKey{Private: s.NodeKey.Private[:], Public: s.NodeKey.Public[:]},
		PeerStatic:            pub[:],
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	msg, _, _, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return hs, appendAuth(nil, s.Mode, ck.ID(), msg), nil
}

// finishInitiate checks the acceptor's answer, whose handshake payload must
// be the ack hello as received, and returns the session and the confirm
// message to send.
func (s *Security) finishInitiate(hs *noise.HandshakeState, ack framing.Hello) (session, []byte, error) {
	mode, _, msg, err := parseAuth(ack.Auth)
	if err != nil {
		return session{}, nil, errNoAuth
	}
	if mode != s.Mode {
		return session{}, nil, fmt.Errorf("%w: peer runs %s, we run %s", errModeMismatch, mode, s.Mode)
	}
	payload, cs1, cs2, err := hs.ReadMessage(nil, msg)
	if err != nil || cs1 == nil {
		return session{}, nil, errHandshake
	}
	if !bytes.Equal(payload, prologue(ack)) {
		return session{}, nil, fmt.Errorf("%w: answer's fields were altered", errHandshake)
	}
	ss := session{tx: cs1, rx: cs2}
	confirm, err := ss.tx.Encrypt(nil, nil, confirmMagic)
	if err != nil {
		return session{}, nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return ss, confirm, nil
}

// respond is the acceptor's side: check the dialler's first message for the
// node it claims to be, and build the answer carrying ack's fields.
func (s *Security) respond(from NodeNum, hello, ack framing.Hello) (session, []byte, error) {
	mode, keyID, msg, err := parseAuth(hello.Auth)
	if err != nil {
		return session{}, nil, errNoAuth
	}
	if mode != s.Mode {
		return session{}, nil, fmt.Errorf("%w: dialler runs %s, we run %s", errModeMismatch, mode, s.Mode)
	}
	var ck *ClusterKey
	for i := range s.ClusterKeys {
		if s.ClusterKeys[i].ID() == keyID {
			ck = &s.ClusterKeys[i]
			break
		}
	}
	if ck == nil {
		return session{}, nil, fmt.Errorf("%w %#x", errUnknownKey, keyID)
	}
	pub, ok := s.PeerKeys[from]
	if !ok {
		return session{}, nil, fmt.Errorf("%w %d", errNoPeerKey, from)
	}
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:           cipherSuite,
		Pattern:               noise.HandshakeKK,
		Prologue:              prologue(hello),
		PresharedKey:          ck[:],
		PresharedKeyPlacement: 2,
		StaticKeypair:         noise.DHKey{Private: s.NodeKey.Private[:], Public: s.NodeKey.Public[:]},
		PeerStatic:            pub[:],
	})
	if err != nil {
		return session{}, nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if _, _, _, err := hs.ReadMessage(nil, msg); err != nil {
		return session{}, nil, errHandshake
	}
	reply, cs1, cs2, err := hs.WriteMessage(nil, prologue(ack))
	if err != nil || cs1 == nil {
		return session{}, nil, errHandshake
	}
	return session{tx: cs2, rx: cs1}, appendAuth(nil, s.Mode, keyID, reply), nil
}

// recordCiphers continues the session's cipher states as record ciphers.
func (ss session) recordCiphers() (tx, rx *recordCipher, err error) {
	if tx, err = newRecordCipher(ss.tx); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if rx, err = newRecordCipher(ss.rx); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return tx, rx, nil
}

// checkConfirm verifies the dialler's third message.
func (ss session) checkConfirm(payload []byte) error {
	pt, err := ss.rx.Decrypt(nil, nil, payload)
	if err != nil || !bytes.Equal(pt, confirmMagic) {
		return errBadConfirm
	}
	return nil
}

// Encrypted connections carry records: a 4-byte little-endian length, then
// that many bytes of ChaCha20-Poly1305 ciphertext of a stretch of the frame
// stream. Frames and records are independent: a large frame spans records.
const (
	recordHeader   = 4
	maxRecordPlain = noise.MaxMsgLen - 16 // Noise's limit, less the tag
	recordTag      = 16
)

var errBadRecord = fmt.Errorf("%w: bad encrypted record", ErrAuth)

// recordCipher seals or opens the records of one direction of a connection.
// It continues the handshake's ChaCha20-Poly1305 cipher state (same key,
// same little-endian counter nonce as Noise) with its own nonce buffer, so
// that sealing allocates nothing: Noise builds a fresh nonce slice per call.
type recordCipher struct {
	aead  cipher.AEAD
	n     uint64
	nonce [chacha20poly1305.NonceSize]byte
}

func newRecordCipher(cs *noise.CipherState) (*recordCipher, error) {
	k := cs.UnsafeKey()
	aead, err := chacha20poly1305.New(k[:])
	if err != nil {
		return nil, err
	}
	return &recordCipher{aead: aead, n: cs.Nonce()}, nil
}

var errNonceExhausted = fmt.Errorf("%w: record counter exhausted; reconnect", ErrAuth)

func (r *recordCipher) next() ([]byte, error) {
	if r.n >= noise.MaxNonce {
		return nil, errNonceExhausted
	}
	binary.LittleEndian.PutUint64(r.nonce[4:], r.n)
	r.n++
	return r.nonce[:], nil
}

func (r *recordCipher) seal(dst, plain []byte) ([]byte, error) {
	nonce, err := r.next()
	if err != nil {
		return dst, err
	}
	return r.aead.Seal(dst, nonce, plain, nil), nil
}

func (r *recordCipher) open(dst, sealed []byte) ([]byte, error) {
	nonce, err := r.next()
	if err != nil {
		return dst, err
	}
	return r.aead.Open(dst, nonce, sealed, nil)
}

// sealInto appends the encryption of plain (header then payload) as records.
func sealInto(dst []byte, tx *recordCipher, scratch *[]byte, hdr, payload []byte) ([]byte, error) {
	// The first record starts with the header; build it in scratch so that
	// Encrypt sees one contiguous plaintext.
	first := min(len(payload), maxRecordPlain-len(hdr))
	*scratch = append(append((*scratch)[:0], hdr...), payload[:first]...)
	var err error
	if dst, err = sealRecord(dst, tx, *scratch); err != nil {
		return dst, err
	}
	for rest := payload[first:]; len(rest) > 0; {
		n := min(len(rest), maxRecordPlain)
		if dst, err = sealRecord(dst, tx, rest[:n]); err != nil {
			return dst, err
		}
		rest = rest[n:]
	}
	return dst, nil
}

func sealRecord(dst []byte, tx *recordCipher, plain []byte) ([]byte, error) {
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst, err := tx.seal(dst, plain)
	if err != nil {
		return dst[:at], err
	}
	binary.LittleEndian.PutUint32(dst[at:], uint32(len(dst)-at-recordHeader))
	return dst, nil
}

// openRecords decrypts the whole records at the start of in, appending the
// plaintext to plain. It returns the bytes of in consumed and, when a record
// is incomplete, how many bytes it needs in all.
func openRecords(plain []byte, rx *recordCipher, in []byte) ([]byte, int, int, error) {
	off := 0
	for len(in)-off >= recordHeader {
		n := int(binary.LittleEndian.Uint32(in[off:]))
		if n < recordTag || n > noise.MaxMsgLen {
			return plain, off, 0, fmt.Errorf("%w: length %d", errBadRecord, n)
		}
		if len(in)-off-recordHeader < n {
			return plain, off, recordHeader + n, nil
		}
		var err error
		plain, err = rx.open(plain, in[off+recordHeader:off+recordHeader+n])
		if err != nil {
			return plain, off, 0, errBadRecord
		}
		off += recordHeader + n
	}
	return plain, off, 0, nil
}
