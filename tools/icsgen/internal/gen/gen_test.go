package gen

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the generator's output")

// TestGolden generates each good input and compares the output with its
// golden file: testdata/minimal.golden, and the committed outputs of the
// services in this repository, which go generate writes the same way.
func TestGolden(t *testing.T) {
	for _, c := range []struct {
		in, iface, golden string
		checkDecoders     bool // as the file's //go:generate line asks
	}{
		{"testdata/minimal.go", "", "testdata/minimal.golden", false},
		{"../wiretest/wire.go", "Wire", "../wiretest/wire_ics.go", true},
		{"../../../../services/examplesvc/kv.go", "KV", "../../../../services/examplesvc/kv_ics.go", true},
		{"../../../../services/sigfwd/wire.go", "Forwarding", "../../../../services/sigfwd/wire_ics.go", true},
	} {
		t.Run(filepath.Base(filepath.Dir(c.in))+"/"+filepath.Base(c.in), func(t *testing.T) {
			got, err := Generate(Options{File: c.in, Interface: c.iface, CheckDecoders: c.checkDecoders})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(got, []byte(generatedMarker+"\n")) {
				t.Fatalf("output does not start with %q", generatedMarker)
			}
			if *update && strings.HasSuffix(c.golden, ".golden") {
				if err := os.WriteFile(c.golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(c.golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("output differs from %s (run go generate, or go test -update for testdata): %s", c.golden, firstDiff(got, want))
			}
			// Deterministic: a second run gives the same bytes.
			again, err := Generate(Options{File: c.in, Interface: c.iface, CheckDecoders: c.checkDecoders})
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("second run differs (err %v)", err)
			}
		})
	}
}

func firstDiff(a, b []byte) string {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return "line " + strconv.Itoa(i+1) + ":\n got: " + al[i] + "\nwant: " + bl[i]
		}
	}
	return "lengths " + strconv.Itoa(len(al)) + " and " + strconv.Itoa(len(bl)) + " lines"
}

// TestBadInputs: each bad input fails with every problem reported as
// file:line: message, in line order.
func TestBadInputs(t *testing.T) {
	const d = "testdata/"
	for _, c := range []struct {
		file, iface string
		want        []string
	}{
		{"bad_types.go", "", []string{
			"bad_types.go:8: method Iface, parameter s: type Shape: unsupported type interface{Area() float64}: interfaces cannot be marshalled",
			"bad_types.go:10: method Nothing, parameter e: type Empty: a struct with no fields to marshal",
			"bad_types.go:15: method Pointer, parameter p: unsupported type *int: pointers are not supported; pass the value",
			"bad_types.go:17: method Chan, parameter c: unsupported type chan int",
			"bad_types.go:19: method Array, parameter a: unsupported type [4]byte: arrays are not supported; use a slice",
			"bad_types.go:21: method Foreign, parameter d: unsupported type time.Duration: icsgen marshals only types declared in this package",
			"bad_types.go:23: method Anonymous, parameter s: unsupported anonymous struct: declare a named struct type in this package",
			"bad_types.go:25: method FloatKey, parameter m: unsupported map key type float64: keys must be bool, integer or string",
			"bad_types.go:29: method Unknown, parameter u: unknown type Undeclared: not declared in package badtypes",
			"bad_types.go:33: method Variadic: variadic parameters are not supported; use a slice",
		}},
		{"bad_dupproc.go", "", []string{
			"bad_dupproc.go:12: method Delete: duplicate procedure number 1 (also Get at line 8)",
		}},
		{"bad_subservice.go", "", []string{
			"bad_subservice.go:5: subservice 6 out of range 0..5",
		}},
		{"bad_channel.go", "", []string{
			"bad_channel.go:5: channel 4 is not a service channel: 0..5 are the priority and reply channels; services use 6 (clms) or 8..254",
		}},
		{"bad_probe.go", "", []string{
			"bad_probe.go:5: channel 7 is not a service channel: it is clms_probe, torn down after each master probe",
		}},
		{"bad_signatures.go", "", []string{
			"bad_signatures.go:12: method NoCtx: the first parameter must be ctx context.Context",
			"bad_signatures.go:14: method CtxSecond: the first parameter must be ctx context.Context",
			"bad_signatures.go:16: method NoError: the last result must be error",
			"bad_signatures.go:18: method ErrorFirst: the last result must be error",
			"bad_signatures.go:20: method NoResults has no results: mark it //icsgen:oneway, or return error",
			"bad_signatures.go:23: method OneWayWithError: a one-way method has no results, not even an error",
			"bad_signatures.go:25: method NodeLater: engine.NodeNum is only allowed right after ctx, where it receives the caller's node",
			"bad_signatures.go:27: method TwoErrors: error is allowed only as the last result",
		}},
		{"bad_annotations.go", "", []string{
			"bad_annotations.go:12: //icsgen:service: channel=eight is not a number",
			`bad_annotations.go:12: //icsgen:service: unknown key "mode" (want name, channel, subservice, version, min, max, inline)`,
			"bad_annotations.go:12: //icsgen:service: version= is required",
			"bad_annotations.go:12: //icsgen:service: min=5 is more than max=2",
			"bad_annotations.go:13: //icsgen:errors: NotAVar is not a package-level variable of package badannotations",
			"bad_annotations.go:13: //icsgen:errors: ErrOK listed twice",
			"bad_annotations.go:15: method Unnumbered has no //icsgen:proc N line",
			"bad_annotations.go:16: method Negative: //icsgen:proc wants one procedure number in 0..1023",
			"bad_annotations.go:18: method TooHigh: //icsgen:proc wants one procedure number in 0..1023",
			"bad_annotations.go:21: method Unknown: unknown directive //icsgen:idempotent (want proc or oneway)",
		}},
		{"bad_recursive.go", "", []string{
			"bad_recursive.go:9: method Store, parameter t: type Tree: field Kids: unsupported recursive type Tree: its decoding depth could not be bounded",
		}},
		{"bad_clash.go", "", []string{
			"bad_clash.go:9: icsgen would declare KVClient, which testdata/bad_clash.go:6 already declares",
		}},
		{"bad_noannotation.go", "", []string{
			"bad_noannotation.go: no interface annotated with //icsgen:service",
		}},
		{"bad_noannotation.go", "Plain", []string{
			"bad_noannotation.go:6: interface Plain has no //icsgen:service line",
			"bad_noannotation.go:7: method Get has no //icsgen:proc N line",
		}},
		{"minimal.go", "Missing", []string{
			"minimal.go: no type Missing in this file",
		}},
	} {
		t.Run(c.file+"/"+c.iface, func(t *testing.T) {
			out, err := Generate(Options{File: d + c.file, Interface: c.iface})
			var ge *Error
			if !errors.As(err, &ge) {
				t.Fatalf("got %d bytes and error %v, want an *Error", len(out), err)
			}
			var want []string
			for _, w := range c.want {
				want = append(want, d+w)
			}
			if got := strings.Split(ge.Msg, "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("errors:\n%s\nwant:\n%s", ge.Msg, strings.Join(want, "\n"))
			}
		})
	}
}

// TestEveryErrorReported: one run reports every problem of a hopeless
// input, so that fixing it takes one edit, not one run per error.
func TestEveryErrorReported(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("package many\n\nimport \"context\"\n\n//icsgen:service channel=8 subservice=0 version=1\ntype Many interface {\n")
	for i := range 15 {
		sb.WriteString("\tM" + string(rune('a'+i)) + "(ctx context.Context, p *int) error\n") // no proc line, a pointer
	}
	sb.WriteString("}\n")
	_, err := Generate(Options{File: "testdata/many.go", Src: []byte(sb.String())})
	var ge *Error
	if !errors.As(err, &ge) {
		t.Fatalf("error %v", err)
	}
	lines := strings.Split(ge.Msg, "\n")
	if len(lines) != 30 {
		t.Fatalf("%d lines, want 30 (2 per method):\n%s", len(lines), ge.Msg)
	}
	if want := "testdata/many.go:21: method Mo, parameter p: unsupported type *int: pointers are not supported; pass the value"; lines[29] != want {
		t.Fatalf("last line %q, want %q", lines[29], want)
	}
}

// TestSyntaxErrorsReported: every syntax error, not the first and "(and N
// more errors)".
func TestSyntaxErrorsReported(t *testing.T) {
	src := "package bad\n\nfunc f() {\n\tx := \n}\n\nfunc g() {\n\ty := )\n}\n"
	_, err := Generate(Options{File: "testdata/syntax.go", Src: []byte(src)})
	var ge *Error
	if !errors.As(err, &ge) {
		t.Fatalf("error %v", err)
	}
	lines := strings.Split(ge.Msg, "\n")
	// One line per error, each with its position; the parser places the
	// second after its recovery, past line 8.
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "testdata/syntax.go:5:") || !strings.HasPrefix(lines[1], "testdata/syntax.go:9:") || strings.Contains(ge.Msg, "more error") {
		t.Fatalf("got:\n%s", ge.Msg)
	}
}

// TestDuplicateProcAmongBrokenMethods: a method with a bad type still
// takes part in the duplicate procedure check.
func TestDuplicateProcAmongBrokenMethods(t *testing.T) {
	src := "package dup\n\nimport \"context\"\n\n//icsgen:service channel=8 subservice=0 version=1\ntype Dup interface {\n" +
		"\t//icsgen:proc 1\n\tA(ctx context.Context, p *int) error\n" +
		"\t//icsgen:proc 1\n\tB(ctx context.Context) error\n}\n"
	_, err := Generate(Options{File: "testdata/dup.go", Src: []byte(src)})
	var ge *Error
	if !errors.As(err, &ge) {
		t.Fatalf("error %v", err)
	}
	want := "testdata/dup.go:8: method A, parameter p: unsupported type *int: pointers are not supported; pass the value\n" +
		"testdata/dup.go:10: method B: duplicate procedure number 1 (also A at line 8)"
	if ge.Msg != want {
		t.Fatalf("got:\n%s\nwant:\n%s", ge.Msg, want)
	}
}

func TestArticle(t *testing.T) {
	for word, want := range map[string]string{"Inventory": "an", "KV": "a", "Forwarding": "a", "HTTPServer": "an", "UDPRelay": "a", "Order": "an", "Wire": "a"} {
		if got := article(word); got != want {
			t.Errorf("article(%q) = %q, want %q", word, got, want)
		}
	}
}

func TestLowerIdent(t *testing.T) {
	for in, want := range map[string]string{"KV": "kv", "Forwarder": "forwarder", "HTTPServer": "httpServer", "X": "x", "kv": "kv", "SigFwd": "sigFwd"} {
		if got := lowerIdent(in); got != want {
			t.Errorf("lowerIdent(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
