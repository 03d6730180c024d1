package framing

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"testing"
)

// TestHeaderLayout pins the byte layout documented on HeaderSize, so a
// change to Encode that still round-trips cannot silently change the wire.
func TestHeaderLayout(t *testing.T) {
	h := Header{
		Type:       TypeReply,
		Flags:      FlagS2,
		Priority:   3,
		Service:    NewServiceID(0x0102, 0x0304),
		Proc:       0x05060708,
		XID:        0x1112131415161718,
		Length:     0x21222324,
		Aux:        0x31323334,
		SvcVersion: 0x4142,
		Status:     0x5152,
	}
	want, _ := hex.DecodeString("03050103" + "04030201" + "08070605" + "1817161514131211" + "24232221" + "34333231" + "4241" + "5251")
	var b [HeaderSize]byte
	h.Encode(b[:])
	if !bytes.Equal(b[:], want) {
		t.Fatalf("Encode:\n got %x\nwant %x", b[:], want)
	}
	got, err := DecodeHeader(want, math.MaxUint32)
	if err != nil {
		t.Fatalf("DecodeHeader: %v", err)
	}
	if got != h {
		t.Fatalf("DecodeHeader:\n got %+v\nwant %+v", got, h)
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	type tc struct {
		name string
		h    Header
		max  uint32
	}
	svc := NewServiceID(8, 1)
	tests := []tc{
		{"hello", Header{Type: TypeHello, Service: svc, Length: 60}, DefaultMaxPayload},
		{"hello-ack", Header{Type: TypeHelloAck, Service: svc, Length: 60}, DefaultMaxPayload},
		{"request", Header{Type: TypeRequest, Service: svc, Proc: 3, XID: 42 | 3<<32, Length: 10, SvcVersion: 1}, DefaultMaxPayload},
		{"request-s2", Header{Type: TypeRequest, Flags: FlagS2, Service: svc, Proc: 3, XID: 43, Length: 10, Aux: 200}, DefaultMaxPayload},
		{"oneway", Header{Type: TypeOneWay, Service: svc, Proc: 9, Length: 1}, DefaultMaxPayload},
		{"oneway-zstd", Header{Type: TypeOneWay, Flags: FlagZstd, Service: svc, Proc: 9, Length: 1, Aux: 1000}, DefaultMaxPayload},
		{"reply", Header{Type: TypeReply, Service: svc, Proc: 3, XID: 42 | 3<<32, Length: 0, Status: 17}, DefaultMaxPayload},
		{"reply-zstd", Header{Type: TypeReply, Flags: FlagZstd, Service: svc, XID: 44, Length: 5, Aux: 5000}, DefaultMaxPayload},
		{"credit", Header{Type: TypeCredit, Aux: 1 << 20}, DefaultMaxPayload},
		{"credit-grant-over-max", Header{Type: TypeCredit, Aux: math.MaxUint32}, 1024}, // a grant is not a payload size
		{"goaway", Header{Type: TypeGoAway}, DefaultMaxPayload},
		{"uncompressed-aux-over-max", Header{Type: TypeRequest, Length: 10, Aux: math.MaxUint32}, 1024}, // aux means nothing uncompressed
		{"length-at-max", Header{Type: TypeRequest, Length: 1024}, 1024},
		{"compressed-aux-at-max", Header{Type: TypeReply, Flags: FlagS2, Length: 1024, Aux: 1024}, 1024},
		{"length-default-max", Header{Type: TypeRequest, Length: DefaultMaxPayload}, DefaultMaxPayload},
		{"max-values", Header{
			Type: TypeReply, Flags: FlagZstd, Priority: MaxPriority,
			Service: math.MaxUint32, Proc: math.MaxUint32, XID: math.MaxUint64,
			Length: math.MaxUint32, Aux: math.MaxUint32,
			SvcVersion: math.MaxUint16, Status: math.MaxUint16,
		}, math.MaxUint32},
	}
	for p := uint8(0); p <= MaxPriority; p++ {
		tests = append(tests, tc{fmt.Sprintf("priority-%d", p), Header{Type: TypeRequest, Priority: p, Service: svc, Length: 3}, DefaultMaxPayload})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b [HeaderSize]byte
			tt.h.Encode(b[:])
			want := byte(ProtocolVersion)
			if tt.h.Type.IsHandshake() {
				want = HandshakeVersion // the handshake's own version, for ever
			}
			if b[0] != want {
				t.Fatalf("version byte %d, want %d", b[0], want)
			}
			got, err := DecodeHeader(b[:], tt.max)
			if err != nil {
				t.Fatalf("DecodeHeader(%x): %v", b[:], err)
			}
			if got != tt.h {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tt.h)
			}
			// AppendHeader appends exactly the Encode bytes after what is there.
			prefix := []byte("prefix")
			ab := AppendHeader(prefix, &tt.h)
			if len(ab) != len(prefix)+HeaderSize || !bytes.Equal(ab[:len(prefix)], prefix) || !bytes.Equal(ab[len(prefix):], b[:]) {
				t.Fatalf("AppendHeader = %x, want %x%x", ab, prefix, b[:])
			}
			// Bytes after the header are not the header's business.
			long := append(b[:], 0xff, 0xff)
			if got, err := DecodeHeader(long, tt.max); err != nil || got != tt.h {
				t.Fatalf("DecodeHeader with trailing bytes = %+v, %v", got, err)
			}
		})
	}
}

func TestDecodeHeaderRejects(t *testing.T) {
	valid := Header{Type: TypeRequest, Service: NewServiceID(8, 1), Proc: 1, XID: 1, Length: 10}
	tests := []struct {
		name string
		h    Header
		raw  func(b []byte) // applied after Encode, for what Header cannot express
		max  uint32         // 0: DefaultMaxPayload
		want error
	}{
		{name: "version-0", h: valid, raw: func(b []byte) { b[0] = 0 }, want: ErrBadVersion},
		{name: "version-2", h: valid, raw: func(b []byte) { b[0] = ProtocolVersion + 1 }, want: ErrBadVersion},
		{name: "version-255", h: valid, raw: func(b []byte) { b[0] = 0xff }, want: ErrBadVersion},
		{name: "all-zero", h: valid, raw: func(b []byte) { clear(b) }, want: ErrBadVersion},
		{name: "type-invalid", h: Header{Type: TypeInvalid}, want: ErrBadType},
		{name: "type-limit", h: Header{Type: typeLimit, Length: 1}, want: ErrBadType},
		{name: "type-12", h: Header{Type: 12}, want: ErrBadType},
		{name: "type-255", h: Header{Type: 255}, want: ErrBadType},
		{name: "flag-bit-5", h: Header{Type: TypeRequest, Flags: 1 << 5}, want: ErrBadFlags},
		{name: "deadline-on-reply", h: Header{Type: TypeReply, Flags: FlagDeadline}, want: ErrBadFlags},
		{name: "cancellable-on-credit", h: Header{Type: TypeCredit, Flags: FlagCancellable, Aux: 1}, want: ErrBadFlags},
		{name: "request-status-without-deadline", h: Header{Type: TypeRequest, Status: 5}, want: ErrBadAux},
		{name: "cancel-with-payload", h: Header{Type: TypeCancel, XID: 1, Length: 1}, want: ErrBadAux},
		{name: "cancel-with-status", h: Header{Type: TypeCancel, XID: 1, Status: 1}, want: ErrBadAux},
		{name: "deadline-on-oneway", h: Header{Type: TypeOneWay, Flags: FlagDeadline}, want: ErrBadFlags},
		{name: "draining-with-aux", h: Header{Type: TypeDraining, Aux: 1}, want: ErrBadAux},
		{name: "flag-bit-7", h: Header{Type: TypeRequest, Flags: 1 << 7}, want: ErrBadFlags},
		{name: "flag-s2-and-unknown", h: Header{Type: TypeRequest, Flags: FlagS2 | 1<<6, Aux: 1}, want: ErrBadFlags},
		{name: "flag-all", h: Header{Type: TypeRequest, Flags: 0xff, Aux: 1}, want: ErrBadFlags},
		{name: "flag-s2-and-zstd", h: Header{Type: TypeRequest, Flags: FlagS2 | FlagZstd, Length: 1, Aux: 1}, want: ErrBadFlags},
		{name: "priority-5", h: Header{Type: TypeRequest, Priority: MaxPriority + 1}, want: ErrBadPriority},
		{name: "priority-255", h: Header{Type: TypeRequest, Priority: 255}, want: ErrBadPriority},
		{name: "length-max-plus-1", h: Header{Type: TypeRequest, Length: 1025}, max: 1024, want: ErrFrameTooLarge},
		{name: "length-default-max-plus-1", h: Header{Type: TypeRequest, Length: DefaultMaxPayload + 1}, want: ErrFrameTooLarge},
		{name: "length-0xffffffff", h: Header{Type: TypeReply, Length: math.MaxUint32}, want: ErrFrameTooLarge},
		{name: "s2-aux-max-plus-1", h: Header{Type: TypeRequest, Flags: FlagS2, Length: 10, Aux: 1025}, max: 1024, want: ErrFrameTooLarge},
		{name: "zstd-aux-0xffffffff", h: Header{Type: TypeReply, Flags: FlagZstd, Length: 10, Aux: math.MaxUint32}, want: ErrFrameTooLarge},
		{name: "compressed-hello", h: Header{Type: TypeHello, Flags: FlagS2, Length: 10, Aux: 20}, want: ErrBadFlags},
		{name: "compressed-hello-ack", h: Header{Type: TypeHelloAck, Flags: FlagZstd, Length: 10, Aux: 20}, want: ErrBadFlags},
		{name: "compressed-credit", h: Header{Type: TypeCredit, Flags: FlagS2, Aux: 20}, want: ErrBadFlags},
		{name: "compressed-credit-zstd", h: Header{Type: TypeCredit, Flags: FlagZstd, Aux: 20}, want: ErrBadFlags},
		{name: "compressed-goaway", h: Header{Type: TypeGoAway, Flags: FlagS2, Aux: 1}, want: ErrBadFlags},
		{name: "credit-with-payload", h: Header{Type: TypeCredit, Length: 1, Aux: 100}, want: ErrBadAux},
		{name: "credit-zero-grant", h: Header{Type: TypeCredit}, want: ErrBadAux},
		{name: "credit-payload-and-zero-grant", h: Header{Type: TypeCredit, Length: 4}, want: ErrBadAux},
	}
	sentinels := []error{ErrBadVersion, ErrBadType, ErrBadFlags, ErrBadPriority, ErrFrameTooLarge, ErrBadAux}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			max := tt.max
			if max == 0 {
				max = DefaultMaxPayload
			}
			var b [HeaderSize]byte
			tt.h.Encode(b[:])
			if tt.raw != nil {
				tt.raw(b[:])
			}
			_, err := DecodeHeader(b[:], max)
			if !errors.Is(err, tt.want) {
				t.Fatalf("DecodeHeader(%x) = %v, want %v", b[:], err, tt.want)
			}
			// Exactly one sentinel: callers switch on them.
			for _, s := range sentinels {
				if s != tt.want && errors.Is(err, s) {
					t.Fatalf("error %v also matches %v", err, s)
				}
			}
			// The decoder surfaces the same error, from the header alone.
			d := Decoder{MaxPayload: max}
			if _, n, err := d.Next(b[:]); n != 0 || !errors.Is(err, tt.want) {
				t.Fatalf("Decoder.Next = n %d, %v; want 0, %v", n, err, tt.want)
			}
			if n, err := d.Need(b[:]); n != 0 || !errors.Is(err, tt.want) {
				t.Fatalf("Decoder.Need = %d, %v; want 0, %v", n, err, tt.want)
			}
		})
	}
}

// TestDecodeHeaderMaxZero checks that a zero bound is a bound, not "no
// limit": only the decoder maps zero to DefaultMaxPayload.
func TestDecodeHeaderMaxZero(t *testing.T) {
	var b [HeaderSize]byte
	(&Header{Type: TypeRequest, Length: 1}).Encode(b[:])
	if _, err := DecodeHeader(b[:], 0); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("DecodeHeader(length 1, max 0) = %v, want %v", err, ErrFrameTooLarge)
	}
	(&Header{Type: TypeRequest}).Encode(b[:])
	if _, err := DecodeHeader(b[:], 0); err != nil {
		t.Fatalf("DecodeHeader(length 0, max 0) = %v", err)
	}
}

func TestDecodeHeaderShort(t *testing.T) {
	var b [HeaderSize]byte
	(&Header{Type: TypeRequest}).Encode(b[:])
	for n := 0; n < HeaderSize; n++ {
		if _, err := DecodeHeader(b[:n], DefaultMaxPayload); err == nil {
			t.Fatalf("DecodeHeader of %d bytes succeeded", n)
		}
	}
}

func TestEncodeShortBufferPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Encode into 31 bytes did not panic")
		}
	}()
	var b [HeaderSize - 1]byte
	(&Header{Type: TypeRequest}).Encode(b[:])
}

func TestTypeString(t *testing.T) {
	tests := []struct {
		t    Type
		want string
	}{
		{TypeInvalid, "invalid"},
		{TypeHello, "hello"},
		{TypeHelloAck, "hello-ack"},
		{TypeRequest, "request"},
		{TypeOneWay, "oneway"},
		{TypeReply, "reply"},
		{TypeCredit, "credit"},
		{TypeGoAway, "goaway"},
		{TypeConfirm, "confirm"},
		{TypeRefuse, "refuse"},
		{TypeCancel, "cancel"},
		{TypeDraining, "draining"},
		{typeLimit, "type(12)"},
		{255, "type(255)"},
	}
	for _, tt := range tests {
		if got := tt.t.String(); got != tt.want {
			t.Errorf("Type(%d).String() = %q, want %q", uint8(tt.t), got, tt.want)
		}
	}
	if len(typeNames) != int(typeLimit) {
		t.Errorf("%d type names for %d types", len(typeNames), typeLimit)
	}
}

func TestFlagsCompressed(t *testing.T) {
	for _, tt := range []struct {
		f    Flags
		want bool
	}{{0, false}, {FlagS2, true}, {FlagZstd, true}, {FlagS2 | FlagZstd, true}, {1 << 2, false}} {
		if got := tt.f.Compressed(); got != tt.want {
			t.Errorf("Flags(%#x).Compressed() = %v, want %v", uint8(tt.f), got, tt.want)
		}
	}
}

func TestServiceID(t *testing.T) {
	tests := []struct {
		ch, ss uint16
		id     ServiceID
		str    string
	}{
		{0, 0, 0, "0/0"},
		{8, 1, 0x00080001, "8/1"},
		{0xffff, 0xffff, 0xffffffff, "65535/65535"},
		{1, 0, 0x00010000, "1/0"},
	}
	for _, tt := range tests {
		id := NewServiceID(tt.ch, tt.ss)
		if id != tt.id || id.Channel() != tt.ch || id.Subservice() != tt.ss || id.String() != tt.str {
			t.Errorf("NewServiceID(%d, %d) = %#x (%d, %d, %q), want %#x %q", tt.ch, tt.ss, uint32(id), id.Channel(), id.Subservice(), id.String(), uint32(tt.id), tt.str)
		}
	}
}

// A handshake frame always carries HandshakeVersion and every other frame
// ProtocolVersion: one with the other's byte is refused, so that decoding
// and encoding a header agree (FuzzDecodeHeader found a hello marked with
// ProtocolVersion that decoded, then re-encoded differently).
func TestHeaderVersionByType(t *testing.T) {
	for _, tc := range []struct {
		typ     Type
		version byte
		ok      bool
	}{
		{TypeHello, HandshakeVersion, true},
		{TypeHello, ProtocolVersion, false},
		{TypeRequest, ProtocolVersion, true},
		{TypeRequest, HandshakeVersion, false},
	} {
		b := make([]byte, HeaderSize)
		b[0], b[1] = tc.version, byte(tc.typ)
		_, err := DecodeHeader(b, 1<<20)
		if ok := err == nil; ok != tc.ok {
			t.Errorf("%s with version byte %d: err %v, want ok=%v", tc.typ, tc.version, err, tc.ok)
		}
		if !tc.ok && !errors.Is(err, ErrBadVersion) {
			t.Errorf("%s with version byte %d: %v, want ErrBadVersion", tc.typ, tc.version, err)
		}
	}
}
