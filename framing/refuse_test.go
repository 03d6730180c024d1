package framing

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRefusalRoundTrip(t *testing.T) {
	for _, r := range []Refusal{
		{Reason: RefuseVersion, Version: 7, Detail: "this node speaks version 7"},
		{Reason: RefuseAuth},
		{Reason: refuseLimit + 3, Version: 1, Detail: "a newer node's reason"},
	} {
		got, err := DecodeRefusal(AppendRefusal(nil, &r))
		if err != nil || got != r {
			t.Errorf("round trip of %+v: %+v, %v", r, got, err)
		}
	}
	// A long detail is cut on a rune boundary, and still decodes.
	long := Refusal{Reason: RefuseCluster, Detail: strings.Repeat("é", MaxRefusalDetail)}
	got, err := DecodeRefusal(AppendRefusal(nil, &long))
	if err != nil || len(got.Detail) > MaxRefusalDetail || !utf8.ValidString(got.Detail) || !strings.HasPrefix(long.Detail, got.Detail) {
		t.Fatalf("long detail: %d bytes, %v", len(got.Detail), err)
	}
	for name, p := range map[string][]byte{
		"short":      {byte(RefuseVersion), 1},
		"not utf-8":  {byte(RefuseCluster), 1, 0, 0xff, 0xfe},
		"too long":   append([]byte{1, 1, 0}, strings.Repeat("x", MaxRefusalDetail+1)...),
		"empty":      nil,
		"one byte":   {1},
		"two bytes":  {1, 0},
		"bad in mid": append([]byte{1, 1, 0, 'a'}, 0xc3),
	} {
		if _, err := DecodeRefusal(p); !errors.Is(err, ErrBadRefusal) {
			t.Errorf("%s: got %v, want ErrBadRefusal", name, err)
		}
	}
}

// TestHandshakeHeaderVersion: handshake frames carry HandshakeVersion in
// byte 0 and decode whatever ProtocolVersion is; other frames must carry
// ProtocolVersion.
func TestHandshakeHeaderVersion(t *testing.T) {
	for _, typ := range []Type{TypeHello, TypeHelloAck, TypeRefuse} {
		b := AppendHeader(nil, &Header{Type: typ})
		if b[0] != HandshakeVersion {
			t.Errorf("%s header starts with version %d, want %d", typ, b[0], HandshakeVersion)
		}
		if _, err := DecodeHeader(b, 4096); err != nil {
			t.Errorf("%s: %v", typ, err)
		}
	}
	b := AppendHeader(nil, &Header{Type: TypeRequest})
	b[0] = ProtocolVersion + 1
	if _, err := DecodeHeader(b, 4096); !errors.Is(err, ErrBadVersion) {
		t.Errorf("request of another version: %v, want ErrBadVersion", err)
	}
}

func FuzzDecodeRefusal(f *testing.F) {
	// A refusal as a node sends it.
	f.Add(AppendRefusal(nil, &Refusal{Reason: RefuseVersion, Version: 2, Detail: "this node speaks version 2"}))
	// No detail at all.
	f.Add(AppendRefusal(nil, &Refusal{Reason: RefuseAuth, Version: 1}))
	// A reason this version does not know.
	f.Add([]byte{200, 1, 0, 'x'})
	// Truncated fixed part, and invalid UTF-8 in the detail.
	f.Add([]byte{1, 1})
	f.Add([]byte{2, 1, 0, 0xff})
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := DecodeRefusal(p)
		if err != nil {
			if !errors.Is(err, ErrBadRefusal) {
				t.Fatalf("error %v does not wrap ErrBadRefusal", err)
			}
			return
		}
		if len(r.Detail) > MaxRefusalDetail || !utf8.ValidString(r.Detail) {
			t.Fatalf("accepted a detail of %d bytes, valid %v", len(r.Detail), utf8.ValidString(r.Detail))
		}
		// What decodes re-encodes to the same bytes.
		if got := AppendRefusal(nil, &r); string(got) != string(p) {
			t.Fatalf("re-encoded %x, was %x", got, p)
		}
	})
}
