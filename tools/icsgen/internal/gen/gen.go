package gen

import (
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"strings"
)

// Options says what to generate.
type Options struct {
	// File is the Go file holding the annotated interface, named as error
	// messages should name it. Types the interface uses may be declared in
	// any non-test file of the same package in the same directory.
	File string
	// Src is File's contents; nil reads File.
	Src []byte
	// Interface names the interface; "" picks the only one in File with an
	// //icsgen:service line.
	Interface string
	// CheckDecoders also emits <prefix>CheckDecoders, for a fuzz target
	// of the service's decoders; without one it would be dead code.
	CheckDecoders bool
}

// Generate returns the gofmt-formatted Go file for one service. A bad
// input gives an *Error whose lines read "file:line: message".
func Generate(o Options) ([]byte, error) {
	p, err := load(o.File, o.Src)
	if err != nil {
		return nil, err
	}
	ts, doc, err := p.findInterface(o.Interface)
	if err != nil {
		return nil, err
	}
	errs := &errList{fset: p.fset}
	svc := p.buildService(ts, doc, errs)
	if err := errs.err(); err != nil {
		return nil, err
	}
	docs := map[string]string{}
	for _, f := range ts.Type.(*ast.InterfaceType).Methods.List {
		if len(f.Names) == 1 {
			docs[f.Names[0].Name] = docText(f.Doc)
		}
	}
	raw := emit(svc, docs, o.CheckDecoders)
	out, err := format.Source(raw)
	if err != nil { // a generator bug: show what it wrote
		return nil, fmt.Errorf("icsgen: generated code does not parse: %v\n%s", err, raw)
	}
	if err := p.checkClashes(out, ts); err != nil {
		return nil, err
	}
	return out, nil
}

// checkClashes refuses output that declares a name the package already
// declares in its other files.
func (p *pkg) checkClashes(out []byte, ts *ast.TypeSpec) error {
	f, err := parser.ParseFile(token.NewFileSet(), "", out, parser.SkipObjectResolution)
	if err != nil {
		return err
	}
	errs := &errList{fset: p.fset}
	for _, d := range f.Decls {
		var names []string
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil {
				names = append(names, d.Name.Name)
			}
		case *ast.GenDecl:
			for _, s := range d.Specs {
				switch s := s.(type) {
				case *ast.TypeSpec:
					names = append(names, s.Name.Name)
				case *ast.ValueSpec:
					for _, n := range s.Names {
						names = append(names, n.Name)
					}
				}
			}
		}
		for _, n := range names {
			if prev, clash := p.names[n]; clash {
				pos := p.fset.Position(prev.Pos())
				errs.add(ts.Pos(), "icsgen would declare %s, which %s:%d already declares", n, pos.Filename, pos.Line)
			}
		}
	}
	return errs.err()
}

// OutputName is the default output file for interface iface: kv_ics.go
// for KV.
func OutputName(iface string) string {
	return strings.ToLower(lowerIdent(iface)) + "_ics.go"
}
