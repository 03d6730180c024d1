package framing

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// TestHelloLayout pins the encoding documented on Hello.
func TestHelloLayout(t *testing.T) {
	h := Hello{Version: 1, From: 0x01020304, To: 0x05060708, Channel: 9, Incarnation: 0x1112131415161718, Cluster: "ci", Auth: []byte{0xaa, 0xbb}}
	want, _ := hex.DecodeString("0100" + "04030201" + "08070605" + "09" + "1817161514131211" + "02" + "6369" + "0200" + "aabb")
	got, err := AppendHello(nil, &h)
	if err != nil {
		t.Fatalf("AppendHello: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendHello:\n got %x\nwant %x", got, want)
	}
}

func TestHelloRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    Hello
	}{
		{"minimal", Hello{Version: ProtocolVersion, Cluster: "c"}},
		{"typical", Hello{Version: ProtocolVersion, From: 1, To: 2, Channel: 3, Incarnation: 1700000000, Cluster: "prod-east", Auth: []byte("token")}},
		{"max-name", Hello{Version: ProtocolVersion, Cluster: strings.Repeat("n", MaxClusterName)}},
		{"max-auth", Hello{Version: ProtocolVersion, Cluster: "c", Auth: pattern(1, MaxHelloAuth)}},
		{"max-values", Hello{Version: 0xffff, From: 0xffffffff, To: 0xffffffff, Channel: 0xff, Incarnation: 1<<64 - 1, Cluster: strings.Repeat("é", MaxClusterName/2), Auth: pattern(2, MaxHelloAuth)}},
		{"binary-name", Hello{Cluster: "\x00\xff\n", Auth: []byte{0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix")
			b, err := AppendHello(bytes.Clone(prefix), &tt.h)
			if err != nil {
				t.Fatalf("AppendHello: %v", err)
			}
			if !bytes.HasPrefix(b, prefix) {
				t.Fatal("AppendHello overwrote b")
			}
			p := b[len(prefix):]
			if want := helloFixed + len(tt.h.Cluster) + 2 + len(tt.h.Auth); len(p) != want {
				t.Fatalf("encoded %d bytes, want %d", len(p), want)
			}
			got, err := DecodeHello(p)
			if err != nil {
				t.Fatalf("DecodeHello: %v", err)
			}
			if got.Version != tt.h.Version || got.From != tt.h.From || got.To != tt.h.To || got.Channel != tt.h.Channel ||
				got.Incarnation != tt.h.Incarnation || got.Cluster != tt.h.Cluster || !bytes.Equal(got.Auth, tt.h.Auth) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tt.h)
			}
			// Auth aliases the payload, with no room to append into it.
			if len(got.Auth) > 0 {
				if &got.Auth[0] != &p[len(p)-len(got.Auth)] || cap(got.Auth) != len(got.Auth) {
					t.Fatal("Auth does not alias the payload tail")
				}
			} else if got.Auth != nil {
				t.Fatal("empty Auth is not nil")
			}
		})
	}
}

func TestAppendHelloRejects(t *testing.T) {
	tests := []struct {
		name string
		h    Hello
	}{
		{"empty-name", Hello{}},
		{"name-too-long", Hello{Cluster: strings.Repeat("n", MaxClusterName+1)}},
		{"auth-too-long", Hello{Cluster: "c", Auth: make([]byte, MaxHelloAuth+1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := AppendHello([]byte("keep"), &tt.h)
			if !errors.Is(err, ErrBadHello) {
				t.Fatalf("AppendHello = %v, want %v", err, ErrBadHello)
			}
			if string(b) != "keep" {
				t.Fatalf("AppendHello failed but returned %q", b)
			}
		})
	}
}

func TestDecodeHelloRejects(t *testing.T) {
	valid, err := AppendHello(nil, &Hello{Version: ProtocolVersion, From: 1, To: 2, Cluster: "cluster", Auth: []byte("auth")})
	if err != nil {
		t.Fatal(err)
	}
	nameLen := 19
	authLen := helloFixed + len("cluster")
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	setAuthLen := func(n uint16) []byte {
		return with(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[authLen:], n); return b })
	}
	tests := []struct {
		name string
		p    []byte
	}{
		{"nil", nil},
		{"one-byte", []byte{1}},
		{"short-fixed", valid[:helloFixed-1]},
		{"fixed-only", valid[:helloFixed]},
		{"empty-name", with(func(b []byte) []byte { b[nameLen] = 0; return b })},
		{"empty-name-short", append(bytes.Clone(valid[:nameLen]), 0)},
		{"truncated-name", valid[:helloFixed+3]},
		{"name-without-authlen", valid[:authLen]},
		{"name-and-half-authlen", valid[:authLen+1]},
		{"name-longer-than-payload", with(func(b []byte) []byte { b[nameLen] = 255; return b })},
		{"auth-truncated", valid[:len(valid)-1]},
		{"auth-extra-byte", append(bytes.Clone(valid), 0)},
		{"authlen-one-more", setAuthLen(5)},
		{"authlen-one-less", setAuthLen(3)},
		{"authlen-zero-with-auth", setAuthLen(0)},
		{"authlen-max", setAuthLen(0xffff)},
		// The bound is checked, not just the consistency: a blob of
		// MaxHelloAuth+1 bytes that is all present is still refused.
		{"auth-too-long", func() []byte {
			b := bytes.Clone(valid[:authLen])
			b = binary.LittleEndian.AppendUint16(b, MaxHelloAuth+1)
			return append(b, make([]byte, MaxHelloAuth+1)...)
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if h, err := DecodeHello(tt.p); !errors.Is(err, ErrBadHello) {
				t.Fatalf("DecodeHello(%x) = %+v, %v; want %v", tt.p, h, err, ErrBadHello)
			}
		})
	}
	if _, err := DecodeHello(valid); err != nil {
		t.Fatalf("DecodeHello(valid): %v", err)
	}
}
