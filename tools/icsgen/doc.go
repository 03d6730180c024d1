// Command icsgen writes the client stubs, server dispatch table,
// registration function and marshalling code of an ICS cluster service
// from an annotated Go interface, as CI's icsgen did from a .svc file.
// The generator itself is internal/gen; docs/WRITING_A_SERVICE.md walks
// through a whole service.
//
// Next to the interface:
//
//	//go:generate go run ../../tools/icsgen -i kv.go -t KV -o kv_ics.go
//
// then:
//
//	go generate ./services/examplesvc
//
// From another module, as a tool of that module:
//
//	go get -tool github.com/clusterinfra/ci/tools/icsgen
//	//go:generate go tool icsgen -t Inventory
//
// --check-decoders adds <prefix>CheckDecoders for a fuzz target.
//
// A bad input exits with status 1 and one "file:line: message" line per
// problem on stderr, every problem in one run.
package main
