package keyseq

import (
	"errors"
	"testing"
)

// FuzzDecode: every decoder of keyseq's network bytes takes anything
// without panicking, never accepts more than maxWire bytes, and what it
// accepts encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(appendUvarints(nil, 3, 10))
	f.Add(append([]byte{byte(statusOK)}, appendUvarints(nil, 3, 1, 10)...))
	f.Add([]byte{byte(statusStaleEpoch)})
	f.Add(appendUvarints(nil, 1<<63, MaxCount+1))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeNext(b); err == nil {
			if len(b) > maxWire || r.count == 0 || r.count > MaxCount || string(appendUvarints(nil, r.epoch, r.count)) != string(b) {
				t.Fatalf("next %x -> %+v", b, r)
			}
		}
		if n, err := decodeNote(b); err == nil && string(appendUvarints(nil, n.epoch, n.highest)) != string(b) {
			t.Fatalf("note %x -> %+v", b, n)
		}
		if rg, err := decodeNextReply(b); err == nil {
			if rg.Count == 0 || rg.First == 0 || rg.Last() < rg.First || string(append([]byte{0}, appendUvarints(nil, rg.Epoch, rg.First, rg.Count)...)) != string(b) {
				t.Fatalf("reply %x -> %+v", b, rg)
			}
		} else if len(b) > 0 && b[0] != 0 && b[0] < byte(statusEnd) && !errors.Is(err, statusErrors[b[0]]) {
			t.Fatalf("reply status %d -> %v", b[0], err)
		}
		if err := decodeStatus(b); err == nil && (len(b) != 1 || b[0] != 0) {
			t.Fatalf("status %x accepted", b)
		}
		if v, err := decodeHighest(b); err == nil && string(appendUvarints(nil, v)) != string(b) {
			t.Fatalf("highest %x -> %d", b, v)
		}
	})
}
