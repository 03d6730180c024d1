package gen

import (
	"go/token"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Service is one annotated interface, validated: everything the emitter
// needs and nothing it has to check again.
type Service struct {
	Iface      string // the interface's name, e.g. "KV"
	Package    string // the Go package the output belongs to
	Source     string // the input file's base name, for the header comment
	Name       string // service name for logs and metrics (name=)
	Channel    int    // ICS channel (channel=)
	Subservice int    // subservice on the channel (subservice=)
	Version    int    // stub version, 1..65535 (version=)
	MinHandles int    // server handles kept warm (min=)
	MaxHandles int    // concurrent handlers at most (max=)
	Inline     bool   // run handlers on the event loop (inline=)
	Errors     []string
	Methods    []*Method       // sorted by procedure number
	Taken      map[string]bool // the package's own top-level names
}

// Method is one procedure of a service.
type Method struct {
	Name    string
	Proc    int
	OneWay  bool
	HasFrom bool    // the server receives the caller's node number after ctx
	Params  []Param // marshalled arguments, in order
	Results []Param // marshalled results, the trailing error excluded
	Pos     token.Position
}

// Param is an argument or a result.
type Param struct {
	Name  string // as written in the interface; "" when unnamed or _
	Spell string // the type as written, for signatures
	Type  *Type
}

// Kind classifies a type for marshalling.
type Kind int

// Kinds, basic first.
const (
	KBool Kind = iota
	KInt8
	KUint8
	KInt16
	KUint16
	KInt32
	KUint32
	KInt64
	KUint64
	KInt
	KUint
	KFloat32
	KFloat64
	KString
	KBytes // []byte
	KSlice
	KMap
	KStruct
)

// basics maps the predeclared type names icsgen marshals to their kinds.
var basics = map[string]Kind{
	"bool": KBool, "int8": KInt8, "uint8": KUint8, "byte": KUint8,
	"int16": KInt16, "uint16": KUint16, "int32": KInt32, "rune": KInt32,
	"uint32": KUint32, "int64": KInt64, "uint64": KUint64, "int": KInt,
	"uint": KUint, "float32": KFloat32, "float64": KFloat64, "string": KString,
}

// basicNames is the canonical spelling of each basic kind.
var basicNames = [...]string{
	KBool: "bool", KInt8: "int8", KUint8: "uint8", KInt16: "int16", KUint16: "uint16",
	KInt32: "int32", KUint32: "uint32", KInt64: "int64", KUint64: "uint64", KInt: "int",
	KUint: "uint", KFloat32: "float32", KFloat64: "float64", KString: "string", KBytes: "[]byte",
}

// fixedSize is the wire size of the fixed-width kinds.
var fixedSize = [...]int{
	KBool: 1, KInt8: 1, KUint8: 1, KInt16: 2, KUint16: 2, KInt32: 4, KUint32: 4,
	KInt64: 8, KUint64: 8, KInt: 8, KUint: 8, KFloat32: 4, KFloat64: 8,
}

// Type is a marshallable type.
type Type struct {
	Kind   Kind
	Named  string // the declared name for a named type of this package, else ""
	Elem   *Type  // KSlice, KMap: element or value type
	Key    *Type  // KMap
	Fields []Field

	min int // smallest encoding in bytes, see minSize
}

// Field is a struct field.
type Field struct {
	Name string
	Type *Type
}

// isBasic reports whether t is a bool, number, string or []byte.
func (t *Type) isBasic() bool { return t.Kind <= KBytes }

// Go is the type's spelling in generated code.
func (t *Type) Go() string {
	switch {
	case t.Named != "":
		return t.Named
	case t.isBasic():
		return basicNames[t.Kind]
	case t.Kind == KSlice:
		return "[]" + t.Elem.Go()
	case t.Kind == KMap:
		return "map[" + t.Key.Go() + "]" + t.Elem.Go()
	}
	panic("gen: unnamed struct type") // resolve never builds one
}

// mangle is the type's part of its codec functions' names, in camel
// case: Entry, SliceEntry, MapStringInt64. Two types may mangle alike (a
// type named SliceEntry and []Entry): the emitter numbers the second.
func (t *Type) mangle() string {
	switch {
	case t.Named != "":
		return upperFirst(t.Named)
	case t.Kind == KBytes:
		return "Bytes"
	case t.isBasic():
		return upperFirst(basicNames[t.Kind])
	case t.Kind == KSlice:
		return "Slice" + t.Elem.mangle()
	case t.Kind == KMap:
		return "Map" + t.Key.mangle() + t.Elem.mangle()
	}
	panic("gen: unnamed struct type")
}

// minSize is the fewest bytes any value of t encodes to; at least 1 for
// every type icsgen accepts (empty structs are refused), which is what
// bounds a decoded element count by the bytes left.
func (t *Type) minSize() int {
	switch {
	case t.Kind < KString:
		return fixedSize[t.Kind]
	case t.Kind == KStruct:
		if t.min == 0 { // resolve refuses recursive types: this ends
			sum := 0
			for _, f := range t.Fields {
				sum += f.Type.minSize()
			}
			t.min = max(sum, 1)
		}
		return t.min
	default: // strings, byte slices, slices and maps start with a length
		return 1
	}
}

// upperFirst capitalises s's first letter.
func upperFirst(s string) string {
	if s == "" {
		return s
	}
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + s[n:]
}

// article is the indefinite article before word in a comment: "an" before
// a vowel, or before an initialism read with a vowel sound (an HTTPServer,
// an SQLStore), otherwise "a".
func article(word string) string {
	if word == "" {
		return "a"
	}
	first := unicode.ToUpper(rune(word[0]))
	vowelSounds := "AEIOU"
	if len(word) > 1 && unicode.IsUpper(rune(word[0])) && unicode.IsUpper(rune(word[1])) {
		vowelSounds = "AEFHILMNORSX" // letters whose names start with a vowel
	}
	if strings.ContainsRune(vowelSounds, first) {
		return "an"
	}
	return "a"
}
