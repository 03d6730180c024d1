package gen

import (
	"bytes"
	"fmt"
	"go/ast"
	"sort"
	"strings"
)

// stubPath is the runtime package generated code calls for everything
// that does not depend on the service: basic codecs, length prefixes,
// decoding errors, the buffer pool and the reply status.
const stubPath = "github.com/clusterinfra/ci/engine/stub"

// emitter writes one service's Go file.
type emitter struct {
	s      *Service
	p      string // prefix of unexported identifiers: the interface name, lowered
	b      bytes.Buffer
	codecs map[string]*Type  // codec functions needed, by name (mangled, numbered if taken)
	names  map[string]string // a type's codec name, by its Go spelling

	checkDecoders bool // emit <prefix>CheckDecoders
}

func (e *emitter) f(format string, args ...any) { fmt.Fprintf(&e.b, format, args...) }

// emit returns the unformatted file.
func emit(s *Service, docs map[string]string, checkDecoders bool) []byte {
	e := &emitter{s: s, p: lowerIdent(s.Iface), codecs: map[string]*Type{}, names: map[string]string{}, checkDecoders: checkDecoders}
	for _, m := range s.Methods {
		for _, a := range m.Params {
			e.need(a.Type)
		}
		for _, r := range m.Results {
			e.need(r.Type)
		}
	}
	e.constants()
	e.client(docs)
	e.server()
	e.methodCodecs()
	e.replyStatus()
	if e.checkDecoders {
		e.fuzzHook()
	}
	e.typeCodecs()
	code := e.b.String()

	var out bytes.Buffer
	fmt.Fprintf(&out, "%s\n// Source: %s, interface %s.\n\npackage %s\n\nimport (\n", generatedMarker, s.Source, s.Iface, s.Package)
	for _, imp := range []struct{ path, use string }{{"context", "context."}, {"fmt", "fmt."}} {
		if strings.Contains(code, imp.use) {
			fmt.Fprintf(&out, "\t%q\n", imp.path)
		}
	}
	fmt.Fprintf(&out, "\n\t%q\n\t%q\n)\n", enginePath, stubPath)
	out.WriteString(code)
	return out.Bytes()
}

// need records that t's codec, and those of the types inside it, are used.
func (e *emitter) need(t *Type) {
	if _, ok := e.names[t.Go()]; ok {
		return
	}
	name := t.mangle()
	for i := 2; e.codecs[name] != nil; i++ { // another type mangles alike
		name = fmt.Sprintf("%s%d", t.mangle(), i)
	}
	e.names[t.Go()], e.codecs[name] = name, t
	switch {
	case t.Kind == KSlice:
		e.need(t.Elem)
	case t.Kind == KMap:
		e.need(t.Key)
		e.need(t.Elem)
	case t.Kind == KStruct:
		for _, f := range t.Fields {
			e.need(f.Type)
		}
	case t.Named != "": // a named basic type wraps the basic codec
		e.need(&Type{Kind: t.Kind})
	}
}

// stubNames are the suffixes of package stub's codecs of the basic kinds:
// stub.AppendInt64 and stub.Int64 for KInt64.
var stubNames = [...]string{
	KBool: "Bool", KInt8: "Int8", KUint8: "Uint8", KInt16: "Int16", KUint16: "Uint16",
	KInt32: "Int32", KUint32: "Uint32", KInt64: "Int64", KUint64: "Uint64", KInt: "Int",
	KUint: "Uint", KFloat32: "Float32", KFloat64: "Float64", KString: "String", KBytes: "Bytes",
}

// stubCodec reports whether t's codec is package stub's rather than
// generated: an unnamed bool, number, string or []byte.
func stubCodec(t *Type) bool { return t.Named == "" && t.isBasic() }

func (e *emitter) enc(t *Type) string {
	if stubCodec(t) {
		return "stub.Append" + stubNames[t.Kind]
	}
	return e.p + "Enc" + e.names[t.Go()]
}

func (e *emitter) dec(t *Type) string {
	if stubCodec(t) {
		return "stub." + stubNames[t.Kind]
	}
	return e.p + "Dec" + e.names[t.Go()]
}

// zero is a literal of t's zero value.
func zero(t *Type) string {
	switch {
	case t.Kind == KStruct:
		return t.Go() + "{}"
	case t.Kind == KBool:
		return "false"
	case t.Kind == KString:
		return `""`
	case t.Kind < KString:
		return "0"
	}
	return "nil"
}

func (e *emitter) constants() {
	s := e.s
	chName := fmt.Sprintf("svc%d", s.Channel-probeChannel-1)
	if s.Channel == firstService {
		chName = "clms"
	}
	e.f("\n// %sServiceID is where %s is served: channel %d (%s), subservice %d.\n", s.Iface, s.Name, s.Channel, chName, s.Subservice)
	e.f("const %sServiceID engine.ServiceID = %d<<16 | %d\n\n", s.Iface, s.Channel, s.Subservice)
	e.f("// %sVersion is the stub version. A caller whose stubs have another version\n", s.Iface)
	e.f("// fails with engine.ErrProgVersMismatch instead of misreading the reply.\n")
	e.f("const %sVersion = %d\n\n", s.Iface, s.Version)
	e.f("// Procedure numbers of %s.\nconst (\n", s.Name)
	for _, m := range s.Methods {
		e.f("\t%sProc%s uint32 = %d\n", s.Iface, m.Name, m.Proc)
	}
	e.f(")\n\nvar (\n")
	for _, m := range s.Methods {
		e.f("\t%sMethod%s = engine.Method{Service: %sServiceID, Proc: %sProc%s, Version: %sVersion, Name: %q, DeclaredErrors: true}\n", e.p, m.Name, s.Iface, s.Iface, m.Name, s.Iface, s.Name)
	}
	e.f(")\n")
}

// reserved are names a client method uses itself, or imports it must see.
var reserved = map[string]bool{
	"c": true, "ctx": true, "to": true, "bufs": true, "reply": true, "err": true,
	"context": true, "engine": true, "stub": true, "fmt": true,
}

// argNames are the client's parameter names: the interface's, unless
// missing or taken by the stub itself, by the generated code (prefix) or by
// the package (a parameter named like a type would hide it).
func (e *emitter) argNames(m *Method) []string {
	names := make([]string, len(m.Params))
	seen := map[string]bool{}
	for i, a := range m.Params {
		n := a.Name
		if n == "" || reserved[n] || seen[n] || e.s.Taken[n] || strings.HasPrefix(n, e.p) ||
			(len(n) > 1 && (n[0] == 'r' || n[0] == 'a') && isDigits(n[1:])) {
			n = fmt.Sprintf("a%d", i)
		}
		seen[n] = true
		names[i] = n
	}
	return names
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

func (e *emitter) client(docs map[string]string) {
	s, p := e.s, e.p
	e.f("\n// %sClient calls %s on other nodes. It is safe for concurrent use; each\n", s.Iface, s.Name)
	e.f("// call borrows its argument and reply buffers from a pool, so that it\n")
	e.f("// allocates only for the results it returns.\n")
	e.f("type %sClient struct{ node *engine.Node }\n\n", s.Iface)
	e.f("// New%sClient returns a client that calls from node n.\n", s.Iface)
	e.f("func New%sClient(n *engine.Node) *%sClient { return &%sClient{node: n} }\n", s.Iface, s.Iface, s.Iface)
	for _, m := range s.Methods {
		names := e.argNames(m)
		var params, args []string
		for i, a := range m.Params {
			params = append(params, names[i]+" "+a.Spell)
			args = append(args, ", "+names[i])
		}
		var results []string
		for _, r := range m.Results {
			results = append(results, r.Spell)
		}
		results = append(results, "error")
		kind := "calls"
		if m.OneWay {
			kind = "sends the one-way message"
		}
		e.f("\n// %s %s %s.%s (procedure %d) on node to.", m.Name, kind, s.Iface, m.Name, m.Proc)
		if m.OneWay {
			e.f("\n// A nil error means the message was handed to the connection, not that it\n// was served.")
		}
		if d := docs[m.Name]; d != "" {
			e.f("\n//\n%s", commentLines(d))
		}
		e.f("\nfunc (c *%sClient) %s(ctx context.Context, to engine.NodeNum", s.Iface, m.Name)
		if len(params) > 0 {
			e.f(", %s", strings.Join(params, ", "))
		}
		if len(results) == 1 {
			e.f(") error {\n")
		} else {
			e.f(") (%s) {\n", strings.Join(results, ", "))
		}
		e.f("\tbufs := %sPool.Get()\n", p)
		e.f("\tbufs.Args = %s%sAppendArgs(bufs.Args[:0]%s)\n", p, m.Name, strings.Join(args, ""))
		if m.OneWay {
			e.f("\terr := c.node.Send(ctx, to, %sMethod%s, bufs.Args)\n", p, m.Name)
			e.f("\t%sPool.Put(bufs)\n\treturn err\n}\n", p)
			continue
		}
		e.f("\treply, err := c.node.Call(ctx, to, %sMethod%s, bufs.Args, bufs.Reply[:0])\n", p, m.Name)
		e.f("\tbufs.Reply = reply\n")
		var rs []string
		for i, r := range m.Results {
			e.f("\tvar r%d %s\n", i, r.Spell)
			rs = append(rs, fmt.Sprintf("r%d", i))
		}
		e.f("\tif err == nil {\n\t\t%s = %s%sResults(reply)\n\t}\n", strings.Join(append(rs, "err"), ", "), p, m.Name)
		e.f("\t%sPool.Put(bufs)\n\treturn %s\n}\n", p, strings.Join(append(rs, "err"), ", "))
	}
	e.f("\n// %sPool lends each call of %s %sClient its argument and reply buffers.\n", p, article(s.Iface), s.Iface)
	e.f("var %sPool stub.BufPool\n", p)
}

func commentLines(doc string) string {
	var sb strings.Builder
	for _, l := range strings.Split(strings.TrimRight(doc, "\n"), "\n") {
		if l == "" {
			sb.WriteString("//\n")
		} else {
			sb.WriteString("// " + l + "\n")
		}
	}
	return strings.TrimSuffix(sb.String(), "\n")
}

func (e *emitter) server() {
	s, p := e.s, e.p
	maxProc := s.Methods[len(s.Methods)-1].Proc
	e.f("\n// %sProcs returns %s's dispatch table for engine.Service.Procs: impl's\n", s.Iface, s.Name)
	e.f("// methods indexed by procedure number.\n")
	e.f("func %sProcs(impl %s) []engine.Handler {\n", s.Iface, s.Iface)
	e.f("\ts := %sServer{impl}\n\tprocs := make([]engine.Handler, %d)\n", p, maxProc+1)
	for _, m := range s.Methods {
		e.f("\tprocs[%sProc%s] = s.serve%s\n", s.Iface, m.Name, m.Name)
	}
	e.f("\treturn procs\n}\n\n")
	e.f("// %sService describes %s to engine.Node.Register, serving impl. Change\n", s.Iface, s.Name)
	e.f("// its fields (handles, compression) before registering if needed.\n")
	e.f("func %sService(impl %s) engine.Service {\n", s.Iface, s.Iface)
	e.f("\treturn engine.Service{\n\t\tID: %sServiceID,\n\t\tName: %q,\n\t\tVersion: %sVersion,\n", s.Iface, s.Name, s.Iface)
	e.f("\t\tProcs: %sProcs(impl),\n\t\tMinHandles: %d,\n\t\tMaxHandles: %d,\n\t\tInline: %v,\n", s.Iface, s.MinHandles, s.MaxHandles, s.Inline)
	e.f("\t\tDeclaredErrors: true, // replies start with a status byte: metrics count declared errors\n\t}\n}\n\n")
	e.f("// Register%s registers %s on node n, served by impl.\n", s.Iface, s.Name)
	e.f("func Register%s(n *engine.Node, impl %s) error { return n.Register(%sService(impl)) }\n\n", s.Iface, s.Iface, s.Iface)
	e.f("// %sServer adapts %s %s to engine handlers.\ntype %sServer struct{ impl %s }\n", p, article(s.Iface), s.Iface, p, s.Iface)
	for _, m := range s.Methods {
		e.f("\nfunc (s %sServer) serve%s(ctx context.Context, req *engine.Request, resp *engine.Response) error {\n", p, m.Name)
		var as []string
		for i := range m.Params {
			as = append(as, fmt.Sprintf("a%d", i))
		}
		call := []string{"ctx"}
		if m.HasFrom {
			call = append(call, "req.From")
		}
		call = append(call, as...)
		if len(as) == 0 {
			e.f("\tif err := %s%sArgs(req.Args); err != nil {\n\t\treturn err\n\t}\n", p, m.Name)
		} else {
			e.f("\t%s, err := %s%sArgs(req.Args)\n\tif err != nil {\n\t\treturn err\n\t}\n", strings.Join(as, ", "), p, m.Name)
		}
		if m.OneWay {
			e.f("\ts.impl.%s(%s)\n\treturn nil\n}\n", m.Name, strings.Join(call, ", "))
			continue
		}
		var rs []string
		for i := range m.Results {
			rs = append(rs, fmt.Sprintf("r%d", i))
		}
		assign := ":="
		if len(rs) == 0 && len(as) > 0 {
			assign = "="
		}
		e.f("\t%s %s s.impl.%s(%s)\n", strings.Join(append(rs, "err"), ", "), assign, m.Name, strings.Join(call, ", "))
		if len(s.Errors) > 0 {
			e.f("\tif err != nil {\n\t\treturn stub.Fail(resp, %sErrors, err)\n\t}\n", p)
		} else {
			e.f("\tif err != nil {\n\t\treturn err\n\t}\n")
		}
		e.f("\tresp.Body = %s%sAppendResults(resp.Body%s)\n\treturn nil\n}\n", p, m.Name, prefixEach(rs))
	}
}

func prefixEach(list []string) string {
	var sb strings.Builder
	for _, s := range list {
		sb.WriteString(", " + s)
	}
	return sb.String()
}

// methodCodecs writes each method's argument and result encoders and decoders.
func (e *emitter) methodCodecs() {
	s, p := e.s, e.p
	for _, m := range s.Methods {
		// Arguments.
		var params, as, zeros []string
		for i, a := range m.Params {
			params = append(params, fmt.Sprintf("a%d %s", i, a.Type.Go()))
			as = append(as, fmt.Sprintf("a%d", i))
			zeros = append(zeros, zero(a.Type))
		}
		e.f("\n// %s%sAppendArgs encodes the arguments of %s.%s.\n", p, m.Name, s.Iface, m.Name)
		e.f("func %s%sAppendArgs(b []byte%s) []byte {\n", p, m.Name, prefixEach(params))
		for i, a := range m.Params {
			e.f("\tb = %s(b, a%d)\n", e.enc(a.Type), i)
		}
		e.f("\treturn b\n}\n\n")
		e.f("// %s%sArgs decodes the arguments of %s.%s; errors wrap engine.ErrCantDecodeArgs.\n", p, m.Name, s.Iface, m.Name)
		if len(as) == 0 {
			e.f("func %s%sArgs(d []byte) error {\n", p, m.Name)
			e.f("\tif len(d) != 0 {\n\t\treturn stub.ArgsError(%q, %q, stub.ErrTrailing)\n\t}\n\treturn nil\n}\n", s.Name, m.Name)
		} else {
			e.f("func %s%sArgs(d []byte) (%s, err error) {\n", p, m.Name, strings.Join(params, ", "))
			fail := strings.Join(append(zeros, fmt.Sprintf("stub.ArgsError(%q, %q, err)", s.Name, m.Name)), ", ")
			for i, a := range m.Params {
				e.f("\tif a%d, d, err = %s(d); err != nil {\n\t\treturn %s\n\t}\n", i, e.dec(a.Type), fail)
			}
			e.f("\tif len(d) != 0 {\n\t\treturn %s\n\t}\n", strings.Join(append(zeros, fmt.Sprintf("stub.ArgsError(%q, %q, stub.ErrTrailing)", s.Name, m.Name)), ", "))
			e.f("\treturn %s, nil\n}\n", strings.Join(as, ", "))
		}
		if m.OneWay {
			continue
		}
		// Results, after the reply's status byte.
		var rparams, rs, rzeros []string
		for i, r := range m.Results {
			rparams = append(rparams, fmt.Sprintf("r%d %s", i, r.Type.Go()))
			rs = append(rs, fmt.Sprintf("r%d", i))
			rzeros = append(rzeros, zero(r.Type))
		}
		e.f("\n// %s%sAppendResults encodes a successful reply of %s.%s.\n", p, m.Name, s.Iface, m.Name)
		e.f("func %s%sAppendResults(b []byte%s) []byte {\n\tb = append(b, 0) // status: results follow\n", p, m.Name, prefixEach(rparams))
		for i, r := range m.Results {
			e.f("\tb = %s(b, r%d)\n", e.enc(r.Type), i)
		}
		e.f("\treturn b\n}\n\n")
		e.f("// %s%sResults decodes a reply of %s.%s; errors wrap engine.ErrCantDecodeRes,\n// or are the error the server returned.\n", p, m.Name, s.Iface, m.Name)
		e.f("func %s%sResults(d []byte) (%s) {\n", p, m.Name, strings.Join(append(rparams, "err error"), ", "))
		e.f("\tif d, err = stub.ReplyBody(%q, %s, d); err != nil {\n\t\treturn %s\n\t}\n", s.Name, e.errTable(), strings.Join(append(rzeros, "err"), ", "))
		fail := strings.Join(append(rzeros, fmt.Sprintf("stub.ResultsError(%q, %q, err)", s.Name, m.Name)), ", ")
		for i, r := range m.Results {
			e.f("\tif r%d, d, err = %s(d); err != nil {\n\t\treturn %s\n\t}\n", i, e.dec(r.Type), fail)
		}
		e.f("\tif len(d) != 0 {\n\t\treturn %s\n\t}\n", strings.Join(append(rzeros, fmt.Sprintf("stub.ResultsError(%q, %q, stub.ErrTrailing)", s.Name, m.Name)), ", "))
		e.f("\treturn %s\n}\n", strings.Join(append(rs, "nil"), ", "))
	}
}

// errTable is the service's declared errors as generated code names them,
// nil when it declares none.
func (e *emitter) errTable() string {
	if len(e.s.Errors) == 0 {
		return "nil"
	}
	return e.p + "Errors"
}

// replyStatus writes the table of declared errors, when the service has
// some: stub.Fail and stub.ReplyBody map them to and from status bytes.
func (e *emitter) replyStatus() {
	s, p := e.s, e.p
	if len(s.Errors) > 0 {
		e.f("\n// %sErrors are the errors %s's handlers return that reach callers as\n", p, s.Name)
		e.f("// themselves: a reply with status i+1 carries %sErrors[i] and its message,\n", p)
		e.f("// and the caller gets an *engine.RemoteError matching it and engine.ErrFailed.\n")
		e.f("var %sErrors = []error{%s}\n", p, strings.Join(s.Errors, ", "))
	}
}

func (e *emitter) fuzzHook() {
	s, p := e.s, e.p
	e.f("\n// %sCheckDecoders is for fuzz targets. It feeds b to the argument decoder\n", p)
	e.f("// of every procedure and the result decoder of every RPC of %s, and\n", s.Name)
	e.f("// reports a decoder that accepts b although re-encoding what it decoded\n")
	e.f("// gives a different number of bytes: it read something no encoder writes.\n")
	e.f("func %sCheckDecoders(b []byte) error {\n", p)
	for _, m := range s.Methods {
		var as []string
		for i := range m.Params {
			as = append(as, fmt.Sprintf("a%d", i))
		}
		if len(as) == 0 {
			e.f("\tif err := %s%sArgs(b); err == nil {\n", p, m.Name)
		} else {
			e.f("\tif %s, err := %s%sArgs(b); err == nil {\n", strings.Join(as, ", "), p, m.Name)
		}
		e.f("\t\tif n := len(%s%sAppendArgs(nil%s)); n != len(b) {\n", p, m.Name, prefixEach(as))
		e.f("\t\t\treturn fmt.Errorf(\"%s.%s arguments: %%d bytes decoded, %%d re-encoded\", len(b), n)\n\t\t}\n\t}\n", s.Name, m.Name)
		if m.OneWay {
			continue
		}
		var rs []string
		for i := range m.Results {
			rs = append(rs, fmt.Sprintf("r%d", i))
		}
		if len(rs) == 0 {
			e.f("\tif err := %s%sResults(b); err == nil {\n", p, m.Name)
		} else {
			e.f("\tif %s, err := %s%sResults(b); err == nil {\n", strings.Join(rs, ", "), p, m.Name)
		}
		e.f("\t\tif n := len(%s%sAppendResults(nil%s)); n != len(b) {\n", p, m.Name, prefixEach(rs))
		e.f("\t\t\treturn fmt.Errorf(\"%s.%s results: %%d bytes decoded, %%d re-encoded\", len(b), n)\n\t\t}\n\t}\n", s.Name, m.Name)
	}
	e.f("\treturn nil\n}\n")
}

// typeCodecs writes an encoder and a decoder per type, sorted by name,
// except for the unnamed basic types: their codecs are package stub's.
func (e *emitter) typeCodecs() {
	names := make([]string, 0, len(e.codecs))
	for n, t := range e.codecs {
		if !stubCodec(t) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		e.typeCodec(e.codecs[n])
	}
}

func (e *emitter) typeCodec(t *Type) {
	T, enc, dec := t.Go(), e.enc(t), e.dec(t)
	e.f("\n")
	switch {
	case t.isBasic(): // a named basic type: convert, and use stub's codec
		base := &Type{Kind: t.Kind}
		e.f("func %s(b []byte, v %s) []byte { return %s(b, %s(v)) }\n\n", enc, T, e.enc(base), base.Go())
		e.f("func %s(d []byte) (%s, []byte, error) {\n\tx, d, err := %s(d)\n\treturn %s(x), d, err\n}\n", dec, T, e.dec(base), T)
	case t.Kind == KSlice:
		e.f("func %s(b []byte, v %s) []byte {\n\tb = stub.AppendLen(b, len(v))\n", enc, T)
		e.f("\tfor _, x := range v {\n\t\tb = %s(b, x)\n\t}\n\treturn b\n}\n\n", e.enc(t.Elem))
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		e.f("\tn, d, err := stub.DecLen(d, %d)\n\tif err != nil || n == 0 {\n\t\treturn nil, d, err\n\t}\n", t.Elem.minSize())
		e.f("\tv := make(%s, n)\n\tfor i := range v {\n", T)
		e.f("\t\tif v[i], d, err = %s(d); err != nil {\n\t\t\treturn nil, nil, err\n\t\t}\n\t}\n\treturn v, d, nil\n}\n", e.dec(t.Elem))
	case t.Kind == KMap:
		e.f("// %s writes the entries in Go's map order: the bytes differ from\n// call to call, the decoded map does not.\n", enc)
		e.f("func %s(b []byte, v %s) []byte {\n\tb = stub.AppendLen(b, len(v))\n", enc, T)
		e.f("\tfor k, x := range v {\n\t\tb = %s(b, k)\n\t\tb = %s(b, x)\n\t}\n\treturn b\n}\n\n", e.enc(t.Key), e.enc(t.Elem))
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		e.f("\tn, d, err := stub.DecLen(d, %d)\n\tif err != nil || n == 0 {\n\t\treturn nil, d, err\n\t}\n", t.Key.minSize()+t.Elem.minSize())
		e.f("\tv := make(%s, min(n, 1024)) // the hint is bounded: small entries could claim much room\n", T)
		e.f("\tfor range n {\n\t\tvar k %s\n\t\tvar x %s\n", t.Key.Go(), t.Elem.Go())
		e.f("\t\tif k, d, err = %s(d); err != nil {\n\t\t\treturn nil, nil, err\n\t\t}\n", e.dec(t.Key))
		e.f("\t\tif x, d, err = %s(d); err != nil {\n\t\t\treturn nil, nil, err\n\t\t}\n", e.dec(t.Elem))
		e.f("\t\tif _, dup := v[k]; dup {\n\t\t\treturn nil, nil, stub.ErrDupKey\n\t\t}\n\t\tv[k] = x\n\t}\n\treturn v, d, nil\n}\n")
	case t.Kind == KStruct:
		e.f("func %s(b []byte, v %s) []byte {\n", enc, T)
		for _, f := range t.Fields {
			e.f("\tb = %s(b, v.%s)\n", e.enc(f.Type), f.Name)
		}
		e.f("\treturn b\n}\n\n")
		e.f("func %s(d []byte) (v %s, _ []byte, err error) {\n", dec, T)
		for _, f := range t.Fields {
			e.f("\tif v.%s, d, err = %s(d); err != nil {\n\t\treturn %s{}, nil, err\n\t}\n", f.Name, e.dec(f.Type), T)
		}
		e.f("\treturn v, d, nil\n}\n")
	}
}

// docText is a method's doc comment without its //icsgen: lines.
func docText(cg *ast.CommentGroup) string {
	if cg == nil {
		return ""
	}
	return cg.Text()
}
