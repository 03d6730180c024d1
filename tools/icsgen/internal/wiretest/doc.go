// Package wiretest exercises icsgen on every type it marshals. Its
// generated file, wire_ics.go, is compiled and tested here: round trips
// of every kind (rapid), strict decoding, a fuzz target over every
// decoder, and calls across two nodes, inline handlers and gaps in the
// dispatch table included.
//
// It is a test bed, not an API; to see how a service uses the generated
// code, read services/examplesvc:
//
//	srv := &server{}
//	_ = RegisterWire(node2, srv)
//	got, err := NewWireClient(node1).Echo(ctx, 2, All{S: "hello"})
package wiretest
