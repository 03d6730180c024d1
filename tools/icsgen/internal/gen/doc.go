// Package gen is icsgen's generator: it reads a Go interface annotated
// with //icsgen: lines and writes the Go file that makes it an ICS cluster
// service. The icsgen command is a thin CLI over Generate; tests call it
// directly.
//
//	out, err := gen.Generate(gen.Options{File: "kv.go", Interface: "KV"})
//	if err != nil {
//		// *gen.Error: one "file:line: message" line per problem
//	}
//	os.WriteFile("kv_ics.go", out, 0o644)
//
// # Annotations
//
// Above the interface:
//
//	//icsgen:service name=kv channel=8 subservice=1 version=1 min=1 max=16 inline=false
//	//icsgen:errors ErrNotFound ErrConflict
//
// channel (6, CLMS's, or 8..254), subservice (0..5) and version (1..65535)
// are required; name defaults to the interface's name in lower case, min
// to 1, max to 16, inline to false. //icsgen:errors is optional and names
// package-level error variables that cross the wire as themselves.
//
// Above each method: //icsgen:proc N (0..1023, unique), and //icsgen:oneway
// for a method with no results at all, sent with engine.Node.Send. Every
// other method returns error last. The first parameter is a
// context.Context; a second of type engine.NodeNum receives the caller's
// node on the server and is left out of the client's signature.
//
// # Types
//
// bool, int8..int64, uint8..uint64, int, uint, float32, float64, string,
// []byte, slices, maps with bool, integer or string keys, and named types
// and structs declared in the interface's package built from those.
// Pointers, arrays, interfaces, channels, functions, types of other
// packages and recursive types are refused with a file:line error.
//
// # Wire format
//
// Arguments are the parameters' encodings back to back; a reply is a
// status byte, 0 followed by the results' encodings, or i+1 followed by a
// string for the i-th declared error. Encodings, with no padding or tags:
//
//	bool                  1 byte, 0 or 1 (anything else is an error)
//	int8, uint8           1 byte
//	int16..uint64         2, 4 or 8 bytes little-endian; int and uint as 8
//	float32, float64      their IEEE 754 bits, 4 or 8 bytes little-endian
//	string, []byte        uvarint length, then the bytes
//	[]T                   uvarint count, then each element
//	map[K]V               uvarint count, then key and value per entry, in
//	                      Go's map order; duplicate keys are an error
//	struct                its fields in declaration order
//
// Lengths are uvarints in their shortest form. A decoder refuses a count
// larger than the bytes left divided by the smallest encoding of one
// element before it allocates anything, refuses bytes left over after the
// last value, and never keeps a reference to its input: strings and byte
// slices are copied. Nil and empty slices and maps encode alike and decode
// as nil.
//
// With Options.CheckDecoders (icsgen --check-decoders) the file also holds
// <prefix>CheckDecoders, for a one-line fuzz target over every decoder of
// the service; without a fuzz target it would be dead code, so it is
// asked for.
//
// # Runtime
//
// Generated files import github.com/clusterinfra/ci/engine/stub for
// everything that does not depend on the service: the codecs of the basic
// types, length prefixes (stub.DecLen), the decoding errors, the pool of
// call buffers and the reply status byte (stub.Fail, stub.ReplyBody).
// Only the codecs of the service's own structs, slices, maps and named
// types are generated, calling stub's for their elements. Changing the
// wire format therefore means changing stub and the emitter together.
package gen
