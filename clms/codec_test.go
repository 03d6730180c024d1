package clms

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func sampleMessages() []Message {
	info := NodeInfo{CPUsTotal: 8, CPUsOnline: 6, MemoryBytes: 1 << 34, KeyServices: []string{"ks"}, Capabilities: []string{"gpu", "ssd"}}
	tr := Transition{ID: 7, Time: time.Unix(1_800_000_000, 5).UTC(), Node: 3, Incarnation: 9, From: StateUp, To: StateGoingDown, Cause: CauseSilence}
	return []Message{
		{Type: MsgRaft, From: 1, To: 2, FromInc: 5, Term: 3, Stamp: 99, Raft: &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(),
			From: new(uint64(1)), To: new(uint64(2)), Term: new(uint64(3)), Commit: new(uint64(17))}},
		{Type: MsgWhoIsMaster, From: 4, To: 1, FromInc: 1},
		{Type: MsgMasterIs, From: 1, To: 4, FromInc: 2, Node: 1, Term: 8},
		{Type: MsgJoin, From: 4, To: 1, FromInc: 1 << 62, Info: info, Digest: 0x9e3779b97f4a7c15},
		{Type: MsgJoinReply, From: 1, To: 4, Status: StatusConfigMismatch, Reason: "timing differs"},
		{Type: MsgJoinReply, From: 1, To: 4, Status: StatusRetry, Reason: "taking the previous incarnation 3 down first"},
		{Type: MsgImAlive, From: 4, To: 1, FromInc: 2, Seq: 1000, Applied: 12, Echo: 77, EchoTerm: 3},
		{Type: MsgImAliveAck, From: 1, To: 4, Seq: 1000, Status: StatusNotMember, Node: 4, Inc: 2},
		{Type: MsgPing, From: 1, To: 4},
		{Type: MsgRecords, From: 1, To: 4, Records: []Record{{Seq: 7, Kind: RecordTransition, Transition: tr, Info: info}, {Seq: 8, Kind: RecordTransition}}},
		{Type: MsgRecordsAck, From: 4, To: 1, Applied: 8},
		// A state image pushed to a node behind the master's kept records.
		{Type: MsgRecords, From: 1, To: 4, Data: newState([]NodeNum{1, 4}, 0).encodeImage()},
		{Type: MsgCallbacksDone, From: 4, To: 1, Transition: 7, Failed: []string{"fs", "net"}},
		{Type: MsgCrashProof, From: 4, To: 1, Node: 3, Inc: 9},
		{Type: MsgLeave, From: 4, To: 1, FromInc: 3},
		{Type: MsgSetInfo, From: 4, To: 1, FromInc: 3, Node: 2, Info: info},
		{Type: MsgRecords, From: 1, To: 4, Records: []Record{{Seq: 9, Kind: RecordNodeInfo, Transition: Transition{Node: 2}, Info: info}}},
		{Type: MsgRecords, From: 1, To: 4, Records: []Record{{Seq: 10, Kind: RecordKeyService, Transition: Transition{Time: tr.Time},
			Key: KeyRecord{Name: "ks", Owner: 4, OwnerInc: 7, Epoch: 3, Phase: KeyFailover, Handover: true, From: 2, Target: 5, Panic: true}}}},
		{Type: MsgKeyPull, From: 4, To: 2, FromInc: 7, KeyService: "ks", Epoch: 3},
		{Type: MsgKeyData, From: 2, To: 4, KeyService: "ks", Epoch: 3, Data: []byte("pulled")},
		{Type: MsgKeyData, From: 2, To: 4, KeyService: "ks", Epoch: 3, Status: StatusRetry, Reason: "disk on fire"},
		{Type: MsgKeyReady, From: 4, To: 1, KeyService: "ks", Epoch: 3},
		{Type: MsgKeyMove, From: 4, To: 1, KeyService: "ks", Node: 5, Status: StatusRetry},
		{Type: MsgKeyReleased, From: 4, To: 1, KeyService: "ks", Epoch: 3},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b, err := m.AppendEncode(nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeMessage(b)
		if err != nil {
			t.Fatalf("%v: %v", m, err)
		}
		if m.Raft != nil {
			if !proto.Equal(m.Raft, got.Raft) {
				t.Fatalf("%v: raft message %v, want %v", m, got.Raft, m.Raft)
			}
			m.Raft, got.Raft = nil, nil
		}
		if !reflect.DeepEqual(m, got) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
		}
		// Every strict prefix is refused, never half-decoded (or a panic).
		for i := range len(b) {
			if _, err := DecodeMessage(b[:i]); !errors.Is(err, ErrDecode) {
				t.Fatalf("%v cut at %d/%d: err %v, want ErrDecode", m, i, len(b), err)
			}
		}
	}
}

func TestMessageIsCompact(t *testing.T) {
	m := Message{Type: MsgImAlive, From: 4, To: 1, FromInc: 1_700_000_000_000_000_000, Seq: 1000, Applied: 12}
	b, _ := m.AppendEncode(nil)
	if len(b) > 20 {
		t.Fatalf("an imalive takes %d bytes, want at most 20", len(b))
	}
}

func TestDecodeRejects(t *testing.T) {
	ok, _ := (&Message{Type: MsgPing, From: 1, To: 2}).AppendEncode(nil)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"wrong version", append([]byte{ProtocolVersion + 1}, ok[1:]...)},
		{"unknown type", []byte{ProtocolVersion, byte(msgTypeEnd), 0}},
		{"unknown field", []byte{ProtocolVersion, byte(MsgPing), 0x80, 0x80, 0x10}},
		{"trailing bytes", append(ok, 0)},
		{"huge string list", []byte{ProtocolVersion, byte(MsgCallbacksDone), 0x80, 0x80, 0x08, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"huge record count", []byte{ProtocolVersion, byte(MsgRecords), 0x80, 0x80, 0x02, 0xff, 0xff, 0x03}},
		{"status out of range", []byte{ProtocolVersion, byte(MsgJoinReply), 0x80, 0x20, byte(statusEnd)}},
		{"node out of range", []byte{ProtocolVersion, byte(MsgPing), 0x01, 0xff, 0xff, 0xff, 0xff, 0x1f}},
	} {
		if _, err := DecodeMessage(tc.b); !errors.Is(err, ErrDecode) {
			t.Errorf("%s: err %v, want ErrDecode", tc.name, err)
		}
	}
}

func TestCommandRoundTrip(t *testing.T) {
	c := command{Kind: RecordTransition, T: Transition{Node: 2, Incarnation: 3, From: StateNeverUp, To: StateComingUp, Cause: CauseJoin},
		Info: NodeInfo{CPUsTotal: 2, Capabilities: []string{"x"}}}
	got, err := decodeCommand(c.encode())
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("got %+v, %v; want %+v", got, err, c)
	}
	if _, err := decodeCommand([]byte{0}); !errors.Is(err, ErrDecode) {
		t.Fatalf("kind 0: err %v", err)
	}
}

// FuzzDecodeMessage: no input makes the decoder panic, allocate beyond its
// bounds or return a message that does not encode back to an equivalent one.
// Seeds are one valid message of each type, plus the rejected shapes above.
func FuzzDecodeMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		b, _ := m.AppendEncode(nil)
		f.Add(b)
	}
	f.Add([]byte{ProtocolVersion, byte(MsgRecords), 0x80, 0x80, 0x02, 0xff, 0xff, 0x03})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMessage(b)
		if err != nil {
			return
		}
		again, err := m.AppendEncode(nil)
		if err != nil {
			t.Fatalf("decoded message does not encode: %v", err)
		}
		m2, err := DecodeMessage(again)
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if m.Raft != nil {
			if !proto.Equal(m.Raft, m2.Raft) {
				t.Fatalf("raft part changed")
			}
			m.Raft, m2.Raft = nil, nil
		}
		if !reflect.DeepEqual(normalize(m), normalize(m2)) {
			t.Fatalf("not stable:\n%+v\n%+v", m, m2)
		}
	})
}

// normalize maps empty slices to nil: the encoding does not tell them apart.
func normalize(m Message) Message {
	if len(m.Records) == 0 {
		m.Records = nil
	}
	if len(m.Failed) == 0 {
		m.Failed = nil
	}
	for i := range m.Records {
		m.Records[i].Info = normInfo(m.Records[i].Info)
	}
	m.Info = normInfo(m.Info)
	return m
}

func normInfo(i NodeInfo) NodeInfo {
	if len(i.KeyServices) == 0 {
		i.KeyServices = nil
	}
	if len(i.Capabilities) == 0 {
		i.Capabilities = nil
	}
	return i
}

// FuzzDecodeCommand: raft log entries are written by a master, but a
// corrupt one must be refused, not crash every voter that applies it.
func FuzzDecodeCommand(f *testing.F) {
	c := command{Kind: RecordTransition, T: Transition{Node: 2, Incarnation: 3, To: StateComingUp}}
	f.Add(c.encode())
	kc := sampleKeyCommand()
	f.Add(kc.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := decodeCommand(b); err == nil {
			if _, err := decodeCommand(c.encode()); err != nil {
				t.Fatalf("re-encoded command does not decode: %v", err)
			}
		}
	})
}
