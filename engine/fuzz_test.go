package engine

import (
	"bytes"
	"errors"
	"testing"

	"github.com/flynn/noise"

	"github.com/clusterinfra/ci/framing"
)

// fuzzSecurity is a fixed pair of members, so that seeds can hold real
// handshake messages.
func fuzzSecurity(f *testing.F) (initiator, responder *Security) {
	ck, keys := clusterKeys(f, 2)
	return securityFor(SecurityEncrypt, 1, ck, keys), securityFor(SecurityEncrypt, 2, ck, keys)
}

// FuzzSecureHandshake feeds arbitrary hello payloads, as they arrive from
// the network, through the acceptor's side of the handshake: decoding the
// hello, checking its Noise message, and a confirmation. Nothing may panic,
// and nothing but the real dialler's own messages may authenticate.
func FuzzSecureHandshake(f *testing.F) {
	ini, resp := fuzzSecurity(f)
	hello := framing.Hello{Version: framing.ProtocolVersion, From: 1, To: 2, Channel: uint8(ChanFirstService), Incarnation: 7, Cluster: "test"}
	_, auth, err := ini.initiate(2, hello)
	if err != nil {
		f.Fatal(err)
	}
	good := hello
	good.Auth = auth
	// Seed: a genuine first message, with a plausible confirmation.
	f.Add(mustHello(f, &good), []byte("0123456789abcdef0123456789abcdef"))
	// Seed: a hello without any auth blob (an unauthenticated dialler).
	f.Add(mustHello(f, &hello), []byte{})
	// Seed: the auth blob cut short after the mode and key id.
	short := hello
	short.Auth = auth[:authHeader]
	f.Add(mustHello(f, &short), []byte{1})
	// Seed: a bit flipped in the Noise message (a tampered handshake).
	flipped := good
	flipped.Auth = append([]byte(nil), auth...)
	flipped.Auth[len(flipped.Auth)-1] ^= 1
	f.Add(mustHello(f, &flipped), []byte{})
	// Seed: the genuine message with a field altered after it was signed
	// (a man in the middle redirecting the connection): the prologue fails.
	moved := good
	moved.Incarnation++
	f.Add(mustHello(f, &moved), []byte{})
	// The genuine hello does authenticate: the oracle below is not vacuous.
	genuine := mustHello(f, &good)
	if _, _, err := resp.respond(1, good, framing.Hello{Version: framing.ProtocolVersion, From: 2, To: 1, Channel: good.Channel, Incarnation: 9, Cluster: "test"}); err != nil {
		f.Fatalf("the genuine hello is refused: %v", err)
	}
	f.Fuzz(func(t *testing.T, payload, confirm []byte) {
		h, err := framing.DecodeHello(payload)
		if err != nil {
			return
		}
		ack := framing.Hello{Version: framing.ProtocolVersion, From: 2, To: h.From, Channel: h.Channel, Incarnation: 9, Cluster: "test"}
		ss, reply, err := resp.respond(NodeNum(h.From), h, ack)
		if err != nil {
			// Refused, and for an authentication reason: nothing else may
			// come out of the key exchange.
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("refusal %v does not wrap ErrAuth", err)
			}
			return
		}
		// Accepted: then it is the genuine dialler's hello, every field and
		// every byte of its Noise message (the fields are the prologue, the
		// message is authenticated), at most re-encoded.
		if got := mustHello(t, &h); !bytes.Equal(got, genuine) {
			t.Fatalf("a hello other than the genuine one authenticated:\n%x\nwant\n%x", got, genuine)
		}
		if len(reply) < authHeader {
			t.Fatalf("accepted handshake answered with %d bytes", len(reply))
		}
		// Only a dialler holding node 1's key and the cluster key gets here;
		// an arbitrary confirmation must still fail.
		if err := ss.checkConfirm(confirm); err == nil {
			t.Fatalf("arbitrary confirmation %x accepted", confirm)
		}
	})
}

// FuzzOpenRecords feeds arbitrary bytes to the encrypted-record reader. It
// must never panic, never claim more bytes than it was given, and never
// produce plaintext from bytes that were not sealed with the session key.
func FuzzOpenRecords(f *testing.F) {
	var key [32]byte
	key[0] = 1
	seal, err := newRecordCipher(noise.UnsafeNewCipherState(cipherSuite, key, 0))
	if err != nil {
		f.Fatal(err)
	}
	var scratch []byte
	rec, err := sealInto(nil, seal, &scratch, bytes.Repeat([]byte{7}, framing.HeaderSize), []byte("payload"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(rec)                                     // a genuine record
	f.Add(rec[:len(rec)-1])                        // truncated: needs one more byte
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}) // length far over Noise's maximum
	f.Add([]byte{3, 0, 0, 0, 1, 2, 3})             // shorter than the tag
	f.Add(append(append([]byte(nil), rec...), rec...))
	f.Fuzz(func(t *testing.T, in []byte) {
		open, _ := newRecordCipher(noise.UnsafeNewCipherState(cipherSuite, key, 0))
		plain, used, need, err := openRecords(nil, open, in)
		if used < 0 || used > len(in) {
			t.Fatalf("consumed %d of %d bytes", used, len(in))
		}
		if need > recordHeader+noise.MaxMsgLen {
			t.Fatalf("asks for %d bytes, over one record", need)
		}
		if err == nil && used > 0 && !bytes.HasPrefix(in, rec[:used]) && len(plain) > 0 {
			t.Fatalf("plaintext from bytes that were not sealed: %x", in[:used])
		}
	})
}
