package gen

import (
	"bytes"
	"fmt"
	"go/ast"
	"sort"
	"strings"
)

// maxPooled is the largest buffer a generated client returns to its pool:
// one call with huge arguments must not pin that memory for ever.
const maxPooled = 64 << 10

// emitter writes one service's Go file.
type emitter struct {
	s      *Service
	p      string // prefix of unexported identifiers: the interface name, lowered
	b      bytes.Buffer
	codecs map[string]*Type // codec functions needed, by mangled name
}

func (e *emitter) f(format string, args ...any) { fmt.Fprintf(&e.b, format, args...) }

// emit returns the unformatted file.
func emit(s *Service, docs map[string]string) []byte {
	e := &emitter{s: s, p: lowerIdent(s.Iface), codecs: map[string]*Type{}}
	for _, m := range s.Methods {
		for _, a := range m.Params {
			e.need(a.Type)
		}
		for _, r := range m.Results {
			e.need(r.Type)
		}
	}
	if len(s.Errors) > 0 {
		e.need(&Type{Kind: KString}) // error messages
	}

	e.constants()
	e.client(docs)
	e.server()
	e.methodCodecs()
	e.replyStatus()
	e.fuzzHook()
	e.runtime()
	e.typeCodecs()
	code := e.b.String()

	var out bytes.Buffer
	fmt.Fprintf(&out, "%s\n// Source: %s, interface %s.\n\npackage %s\n\nimport (\n", generatedMarker, s.Source, s.Iface, s.Package)
	for _, imp := range []struct{ path, use string }{
		{"context", "context."}, {"encoding/binary", "binary."}, {"errors", "errors."},
		{"fmt", "fmt."}, {"math", "math."}, {"sync", "sync."},
	} {
		if strings.Contains(code, imp.use) {
			fmt.Fprintf(&out, "\t%q\n", imp.path)
		}
	}
	fmt.Fprintf(&out, "\n\t%q\n)\n", enginePath)
	out.WriteString(code)
	return out.Bytes()
}

// need records that t's codec, and those of the types inside it, are used.
func (e *emitter) need(t *Type) {
	name := t.mangle()
	if _, ok := e.codecs[name]; ok {
		return
	}
	e.codecs[name] = t
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

func (e *emitter) enc(t *Type) string { return e.p + "Enc_" + t.mangle() }
func (e *emitter) dec(t *Type) string { return e.p + "Dec_" + t.mangle() }

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
		e.f("\t%sMethod%s = engine.Method{Service: %sServiceID, Proc: %sProc%s, Version: %sVersion}\n", e.p, m.Name, s.Iface, s.Iface, m.Name, s.Iface)
	}
	e.f(")\n")
}

// reserved are names a client method uses itself, or imports it must see.
var reserved = map[string]bool{
	"c": true, "ctx": true, "to": true, "bufs": true, "reply": true, "err": true,
	"context": true, "engine": true, "binary": true, "errors": true, "fmt": true, "math": true, "sync": true,
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
		e.f("\tbufs := %sPool.Get().(*%sBufs)\n", p, p)
		e.f("\tbufs.args = %s%sAppendArgs(bufs.args[:0]%s)\n", p, m.Name, strings.Join(args, ""))
		if m.OneWay {
			e.f("\terr := c.node.Send(ctx, to, %sMethod%s, bufs.args)\n", p, m.Name)
			e.f("\t%sPutBufs(bufs)\n\treturn err\n}\n", p)
			continue
		}
		e.f("\treply, err := c.node.Call(ctx, to, %sMethod%s, bufs.args, bufs.reply[:0])\n", p, m.Name)
		e.f("\tbufs.reply = reply\n")
		var rs []string
		for i, r := range m.Results {
			e.f("\tvar r%d %s\n", i, r.Spell)
			rs = append(rs, fmt.Sprintf("r%d", i))
		}
		e.f("\tif err == nil {\n\t\t%s = %s%sResults(reply)\n\t}\n", strings.Join(append(rs, "err"), ", "), p, m.Name)
		e.f("\t%sPutBufs(bufs)\n\treturn %s\n}\n", p, strings.Join(append(rs, "err"), ", "))
	}
	e.f("\n// %sBufs are one call's argument and reply buffers.\ntype %sBufs struct{ args, reply []byte }\n\n", p, p)
	e.f("var %sPool = sync.Pool{New: func() any { return new(%sBufs) }}\n\n", p, p)
	e.f("// %sPutBufs returns b to the pool, without buffers that grew past %d bytes.\n", p, maxPooled)
	e.f("func %sPutBufs(b *%sBufs) {\n", p, p)
	e.f("\tif cap(b.args) > %d {\n\t\tb.args = nil\n\t}\n", maxPooled)
	e.f("\tif cap(b.reply) > %d {\n\t\tb.reply = nil\n\t}\n", maxPooled)
	e.f("\t%sPool.Put(b)\n}\n", p)
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
	e.f("\t\tProcs: %sProcs(impl),\n\t\tMinHandles: %d,\n\t\tMaxHandles: %d,\n\t\tInline: %v,\n\t}\n}\n\n", s.Iface, s.MinHandles, s.MaxHandles, s.Inline)
	e.f("// Register%s registers %s on node n, served by impl.\n", s.Iface, s.Name)
	e.f("func Register%s(n *engine.Node, impl %s) error { return n.Register(%sService(impl)) }\n\n", s.Iface, s.Iface, s.Iface)
	e.f("// %sServer adapts a %s to engine handlers.\ntype %sServer struct{ impl %s }\n", p, s.Iface, p, s.Iface)
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
			e.f("\tif err != nil {\n\t\treturn %sFail(resp, err)\n\t}\n", p)
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
			e.f("\tif len(d) != 0 {\n\t\treturn %sArgsError(%q, %sErrTrailing)\n\t}\n\treturn nil\n}\n", p, m.Name, p)
		} else {
			e.f("func %s%sArgs(d []byte) (%s, err error) {\n", p, m.Name, strings.Join(params, ", "))
			fail := strings.Join(append(zeros, fmt.Sprintf("%sArgsError(%q, err)", p, m.Name)), ", ")
			for i, a := range m.Params {
				e.f("\tif a%d, d, err = %s(d); err != nil {\n\t\treturn %s\n\t}\n", i, e.dec(a.Type), fail)
			}
			e.f("\tif len(d) != 0 {\n\t\treturn %s\n\t}\n", strings.Join(append(zeros, fmt.Sprintf("%sArgsError(%q, %sErrTrailing)", p, m.Name, p)), ", "))
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
		e.f("\tif d, err = %sReplyBody(d); err != nil {\n\t\treturn %s\n\t}\n", p, strings.Join(append(rzeros, "err"), ", "))
		fail := strings.Join(append(rzeros, fmt.Sprintf("%sResultsError(%q, err)", p, m.Name)), ", ")
		for i, r := range m.Results {
			e.f("\tif r%d, d, err = %s(d); err != nil {\n\t\treturn %s\n\t}\n", i, e.dec(r.Type), fail)
		}
		e.f("\tif len(d) != 0 {\n\t\treturn %s\n\t}\n", strings.Join(append(rzeros, fmt.Sprintf("%sResultsError(%q, %sErrTrailing)", p, m.Name, p)), ", "))
		e.f("\treturn %s\n}\n", strings.Join(append(rs, "nil"), ", "))
	}
}

// replyStatus writes the reply's status byte handling and, when the
// service declares errors, the error type callers see.
func (e *emitter) replyStatus() {
	s, p := e.s, e.p
	if len(s.Errors) > 0 {
		e.f("\n// %sErrors are the errors %s's handlers return that reach callers as\n", p, s.Name)
		e.f("// themselves: a reply with status i+1 carries %sErrors[i] and its message.\n", p)
		e.f("var %sErrors = [...]error{%s}\n\n", p, strings.Join(s.Errors, ", "))
		e.f("// %sFail answers a handler's error: one of %sErrors travels in the reply\n", p, p)
		e.f("// body; any other goes back through the engine as an *engine.RemoteError.\n")
		e.f("func %sFail(resp *engine.Response, err error) error {\n", p)
		e.f("\tfor i, sentinel := range %sErrors {\n\t\tif errors.Is(err, sentinel) {\n", p)
		e.f("\t\t\tresp.Body = append(resp.Body[:0], byte(i+1))\n")
		e.f("\t\t\tresp.Body = %s(resp.Body, err.Error())\n\t\t\treturn nil\n\t\t}\n\t}\n\treturn err\n}\n\n", e.enc(&Type{Kind: KString}))
		e.f("// %sRemoteError is a declared error as a caller receives it: errors.Is\n", p)
		e.f("// matches both the sentinel and engine.ErrFailed.\n")
		e.f("type %sRemoteError struct {\n\tsentinel error\n\tmsg      string\n}\n\n", p)
		e.f("func (e *%sRemoteError) Error() string   { return e.msg }\n", p)
		e.f("func (e *%sRemoteError) Unwrap() []error { return []error{e.sentinel, engine.ErrFailed} }\n", p)
	}
	e.f("\n// %sReplyBody checks a reply's status byte and returns the results after it.\n", p)
	e.f("func %sReplyBody(d []byte) ([]byte, error) {\n", p)
	e.f("\tif len(d) == 0 {\n\t\treturn nil, %sResultsError(\"reply\", %sErrTruncated)\n\t}\n", p, p)
	e.f("\tif d[0] == 0 {\n\t\treturn d[1:], nil\n\t}\n")
	if len(s.Errors) > 0 {
		e.f("\tif i := int(d[0]) - 1; i < len(%sErrors) {\n", p)
		e.f("\t\tif msg, rest, err := %s(d[1:]); err == nil && len(rest) == 0 {\n", e.dec(&Type{Kind: KString}))
		e.f("\t\t\treturn nil, &%sRemoteError{sentinel: %sErrors[i], msg: msg}\n\t\t}\n\t}\n", p, p)
	}
	e.f("\treturn nil, %sResultsError(\"reply\", %sErrStatus)\n}\n", p, p)
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

// runtime writes the errors and helpers every codec shares.
func (e *emitter) runtime() {
	s, p := e.s, e.p
	e.f("\n// Decoding errors of %s. Bytes from the network are untrusted: every\n", s.Name)
	e.f("// decoder checks what it reads against the input left before using it.\n")
	e.f("var (\n")
	for _, v := range []struct{ name, msg string }{
		{"Truncated", "input truncated"},
		{"Length", "length larger than the input left"},
		{"Varint", "malformed length"},
		{"Bool", "bool that is not 0 or 1"},
		{"Range", "integer out of range"},
		{"DupKey", "duplicate map key"},
		{"Trailing", "bytes after the last value"},
		{"Status", "unknown reply status"},
	} {
		e.f("\t%sErr%s = errors.New(%q)\n", p, v.name, s.Name+": "+v.msg)
	}
	e.f(")\n\n")
	e.f("func %sArgsError(method string, err error) error {\n", p)
	e.f("\treturn fmt.Errorf(\"%%w: %s.%%s: %%w\", engine.ErrCantDecodeArgs, method, err)\n}\n\n", s.Name)
	e.f("func %sResultsError(method string, err error) error {\n", p)
	e.f("\treturn fmt.Errorf(\"%%w: %s.%%s: %%w\", engine.ErrCantDecodeRes, method, err)\n}\n", s.Name)
	if e.usesLen() {
		e.f("\n// %sDecLen reads a count of items, each at least size bytes long, and refuses\n", p)
		e.f("// one that the input left could not hold: nothing is allocated for it.\n")
		e.f("func %sDecLen(d []byte, size int) (int, []byte, error) {\n", p)
		e.f("\tn, k := binary.Uvarint(d)\n\tswitch {\n\tcase k == 0:\n\t\treturn 0, nil, %sErrTruncated\n", p)
		e.f("\tcase k < 0 || (k > 1 && d[k-1] == 0): // overflow, or not the shortest encoding\n\t\treturn 0, nil, %sErrVarint\n\t}\n", p)
		e.f("\td = d[k:]\n\tif n > uint64(len(d)/size) {\n\t\treturn 0, nil, %sErrLength\n\t}\n\treturn int(n), d, nil\n}\n", p)
	}
}

func (e *emitter) usesLen() bool {
	for _, t := range e.codecs {
		if t.Kind >= KString && t.Kind != KStruct {
			return true
		}
	}
	return false
}

// typeCodecs writes an encoder and a decoder per type, sorted by name.
func (e *emitter) typeCodecs() {
	names := make([]string, 0, len(e.codecs))
	for n := range e.codecs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e.typeCodec(e.codecs[n])
	}
}

func (e *emitter) typeCodec(t *Type) {
	p, T, enc, dec := e.p, t.Go(), e.enc(t), e.dec(t)
	e.f("\n")
	if t.Named != "" && t.isBasic() {
		base := &Type{Kind: t.Kind}
		e.f("func %s(b []byte, v %s) []byte { return %s(b, %s(v)) }\n\n", enc, T, e.enc(base), base.Go())
		e.f("func %s(d []byte) (%s, []byte, error) {\n\tx, d, err := %s(d)\n\treturn %s(x), d, err\n}\n", dec, T, e.dec(base), T)
		return
	}
	trunc := func(n int, zero string) {
		e.f("\tif len(d) < %d {\n\t\treturn %s, nil, %sErrTruncated\n\t}\n", n, zero, p)
	}
	le := "binary.LittleEndian."
	switch t.Kind {
	case KBool:
		e.f("func %s(b []byte, v bool) []byte {\n\tif v {\n\t\treturn append(b, 1)\n\t}\n\treturn append(b, 0)\n}\n\n", enc)
		e.f("func %s(d []byte) (bool, []byte, error) {\n", dec)
		trunc(1, "false")
		e.f("\tif d[0] > 1 {\n\t\treturn false, nil, %sErrBool\n\t}\n\treturn d[0] == 1, d[1:], nil\n}\n", p)
	case KInt8, KUint8:
		e.f("func %s(b []byte, v %s) []byte { return append(b, byte(v)) }\n\n", enc, T)
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		trunc(1, "0")
		e.f("\treturn %s(d[0]), d[1:], nil\n}\n", T)
	case KInt16, KUint16, KInt32, KUint32, KInt64, KUint64:
		bits := map[Kind]int{KInt16: 16, KUint16: 16, KInt32: 32, KUint32: 32, KInt64: 64, KUint64: 64}[t.Kind]
		e.f("func %s(b []byte, v %s) []byte { return %sAppendUint%d(b, uint%d(v)) }\n\n", enc, T, le, bits, bits)
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		trunc(bits/8, "0")
		e.f("\treturn %s(%sUint%d(d)), d[%d:], nil\n}\n", T, le, bits, bits/8)
	case KInt, KUint:
		wide := map[Kind]string{KInt: "int64", KUint: "uint64"}[t.Kind]
		e.f("// %s travels as 8 bytes, like an %s.\n", T, wide)
		e.f("func %s(b []byte, v %s) []byte { return %sAppendUint64(b, uint64(v)) }\n\n", enc, T, le)
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		trunc(8, "0")
		e.f("\tx := %s(%sUint64(d))\n\tif %s(%s(x)) != x { // a 32-bit platform\n\t\treturn 0, nil, %sErrRange\n\t}\n", wide, le, wide, T, p)
		e.f("\treturn %s(x), d[8:], nil\n}\n", T)
	case KFloat32, KFloat64:
		bits := map[Kind]int{KFloat32: 32, KFloat64: 64}[t.Kind]
		e.f("func %s(b []byte, v %s) []byte { return %sAppendUint%d(b, math.Float%dbits(v)) }\n\n", enc, T, le, bits, bits)
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		trunc(bits/8, "0")
		e.f("\treturn math.Float%dfrombits(%sUint%d(d)), d[%d:], nil\n}\n", bits, le, bits, bits/8)
	case KString:
		e.f("func %s(b []byte, v string) []byte {\n\tb = binary.AppendUvarint(b, uint64(len(v)))\n\treturn append(b, v...)\n}\n\n", enc)
		e.f("func %s(d []byte) (string, []byte, error) {\n\tn, d, err := %sDecLen(d, 1)\n\tif err != nil {\n\t\treturn \"\", nil, err\n\t}\n", dec, p)
		e.f("\treturn string(d[:n]), d[n:], nil\n}\n")
	case KBytes:
		e.f("func %s(b []byte, v []byte) []byte {\n\tb = binary.AppendUvarint(b, uint64(len(v)))\n\treturn append(b, v...)\n}\n\n", enc)
		e.f("// %s copies: the input is a pooled or network buffer.\n", dec)
		e.f("func %s(d []byte) ([]byte, []byte, error) {\n\tn, d, err := %sDecLen(d, 1)\n\tif err != nil || n == 0 {\n\t\treturn nil, d, err\n\t}\n", dec, p)
		e.f("\treturn append([]byte(nil), d[:n]...), d[n:], nil\n}\n")
	case KSlice:
		e.f("func %s(b []byte, v %s) []byte {\n\tb = binary.AppendUvarint(b, uint64(len(v)))\n", enc, T)
		e.f("\tfor _, x := range v {\n\t\tb = %s(b, x)\n\t}\n\treturn b\n}\n\n", e.enc(t.Elem))
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		e.f("\tn, d, err := %sDecLen(d, %d)\n\tif err != nil || n == 0 {\n\t\treturn nil, d, err\n\t}\n", p, t.Elem.minSize())
		e.f("\tv := make(%s, n)\n\tfor i := range v {\n", T)
		e.f("\t\tif v[i], d, err = %s(d); err != nil {\n\t\t\treturn nil, nil, err\n\t\t}\n\t}\n\treturn v, d, nil\n}\n", e.dec(t.Elem))
	case KMap:
		e.f("// %s writes the entries in Go's map order: the bytes differ from\n// call to call, the decoded map does not.\n", enc)
		e.f("func %s(b []byte, v %s) []byte {\n\tb = binary.AppendUvarint(b, uint64(len(v)))\n", enc, T)
		e.f("\tfor k, x := range v {\n\t\tb = %s(b, k)\n\t\tb = %s(b, x)\n\t}\n\treturn b\n}\n\n", e.enc(t.Key), e.enc(t.Elem))
		e.f("func %s(d []byte) (%s, []byte, error) {\n", dec, T)
		e.f("\tn, d, err := %sDecLen(d, %d)\n\tif err != nil || n == 0 {\n\t\treturn nil, d, err\n\t}\n", p, t.Key.minSize()+t.Elem.minSize())
		e.f("\tv := make(%s, min(n, 1024)) // the hint is bounded: small entries could claim much room\n", T)
		e.f("\tfor range n {\n\t\tvar k %s\n\t\tvar x %s\n", t.Key.Go(), t.Elem.Go())
		e.f("\t\tif k, d, err = %s(d); err != nil {\n\t\t\treturn nil, nil, err\n\t\t}\n", e.dec(t.Key))
		e.f("\t\tif x, d, err = %s(d); err != nil {\n\t\t\treturn nil, nil, err\n\t\t}\n", e.dec(t.Elem))
		e.f("\t\tif _, dup := v[k]; dup {\n\t\t\treturn nil, nil, %sErrDupKey\n\t\t}\n\t\tv[k] = x\n\t}\n\treturn v, d, nil\n}\n", p)
	case KStruct:
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
