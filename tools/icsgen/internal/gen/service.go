package gen

import (
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// buildService validates the interface ts and its annotations into a Service.
func (p *pkg) buildService(ts *ast.TypeSpec, doc *ast.CommentGroup, errs *errList) *Service {
	svc := &Service{
		Iface:      ts.Name.Name,
		Package:    p.name,
		Source:     filepath.Base(p.fset.Position(p.input.Package).Filename),
		Name:       lowerIdent(ts.Name.Name),
		Channel:    -1,
		Subservice: -1,
		MinHandles: 1,  // one handle warm: the first request does not wait for a goroutine
		MaxHandles: 16, // bounded concurrency unless the service says otherwise
		Taken:      map[string]bool{},
	}
	for name := range p.names {
		svc.Taken[name] = true
	}
	it, ok := ts.Type.(*ast.InterfaceType)
	if !ok {
		errs.add(ts.Pos(), "%s is not an interface", ts.Name.Name)
		return nil
	}
	if ts.TypeParams != nil {
		errs.add(ts.Pos(), "interface %s: type parameters are not supported", ts.Name.Name)
	}
	p.serviceDirectives(svc, ts, doc, errs)

	ctxName := importName(p.input, "context")
	engName := importName(p.input, enginePath)
	r := &resolver{p: p, errs: errs, cache: map[string]*Type{}, active: map[string]bool{}}
	procs := map[int]*Method{}
	for _, f := range it.Methods.List {
		ft, ok := f.Type.(*ast.FuncType)
		if !ok || len(f.Names) != 1 {
			errs.add(f.Pos(), "interface %s: embedded interfaces are not supported; list the methods", ts.Name.Name)
			continue
		}
		m, ok := p.buildMethod(f.Names[0].Name, f, ft, ctxName, engName, r, errs)
		if m.Proc >= 0 { // checked even for a method with other errors: report everything at once
			if prev, dup := procs[m.Proc]; dup {
				errs.add(f.Pos(), "method %s: duplicate procedure number %d (also %s at line %d)", m.Name, m.Proc, prev.Name, prev.Pos.Line)
				continue
			}
			procs[m.Proc] = m
		}
		if ok {
			svc.Methods = append(svc.Methods, m)
		}
	}
	if len(it.Methods.List) == 0 {
		errs.add(ts.Pos(), "interface %s has no methods", ts.Name.Name)
	}
	sort.Slice(svc.Methods, func(i, j int) bool { return svc.Methods[i].Proc < svc.Methods[j].Proc })
	return svc
}

// serviceDirectives reads //icsgen:service and //icsgen:errors.
func (p *pkg) serviceDirectives(svc *Service, ts *ast.TypeSpec, doc *ast.CommentGroup, errs *errList) {
	var seen bool
	for _, d := range directives(doc) {
		switch d.verb {
		case "service":
			if seen {
				errs.add(d.pos, "second //icsgen:service line")
			}
			seen = true
			p.serviceArgs(svc, d, errs)
		case "errors":
			if len(d.args) == 0 {
				errs.add(d.pos, "//icsgen:errors names no errors")
			}
			for _, name := range d.args {
				switch {
				case !p.vars[name]:
					errs.add(d.pos, "//icsgen:errors: %s is not a package-level variable of package %s", name, p.name)
				case contains(svc.Errors, name):
					errs.add(d.pos, "//icsgen:errors: %s listed twice", name)
				default:
					svc.Errors = append(svc.Errors, name)
				}
			}
			if len(svc.Errors) > MaxErrors {
				errs.add(d.pos, "//icsgen:errors: %d errors, at most %d", len(svc.Errors), MaxErrors)
			}
		default:
			errs.add(d.pos, "unknown directive //icsgen:%s on an interface (want service or errors)", d.verb)
		}
	}
	if !seen {
		errs.add(ts.Pos(), "interface %s has no //icsgen:service line", ts.Name.Name)
	}
}

func (p *pkg) serviceArgs(svc *Service, d directive, errs *errList) {
	got := map[string]bool{}
	for _, a := range d.args {
		key, val, ok := strings.Cut(a, "=")
		if !ok || val == "" {
			errs.add(d.pos, "//icsgen:service: %q is not key=value", a)
			continue
		}
		if got[key] {
			errs.add(d.pos, "//icsgen:service: %s given twice", key)
		}
		got[key] = true
		num := func(lo, hi int) int {
			n, err := strconv.Atoi(val)
			if err != nil || n < lo || n > hi {
				errs.add(d.pos, "//icsgen:service: %s=%s: want a number in %d..%d", key, val, lo, hi)
				return lo
			}
			return n
		}
		switch key {
		case "name":
			if !token.IsIdentifier(val) {
				errs.add(d.pos, "//icsgen:service: name=%s: want letters, digits and _", val)
			}
			svc.Name = val
		case "channel":
			n, err := strconv.Atoi(val)
			switch {
			case err != nil:
				errs.add(d.pos, "//icsgen:service: channel=%s is not a number", val)
			case n < firstService || n > lastChannel:
				errs.add(d.pos, "channel %d is not a service channel: 0..5 are the priority and reply channels; services use %d (clms) or %d..%d", n, firstService, probeChannel+1, lastChannel)
			case n == probeChannel:
				errs.add(d.pos, "channel %d is not a service channel: it is clms_probe, torn down after each master probe", n)
			default:
				svc.Channel = n
			}
		case "subservice":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || n >= subservices {
				errs.add(d.pos, "subservice %s out of range 0..%d", val, subservices-1)
			} else {
				svc.Subservice = n
			}
		case "version":
			svc.Version = num(1, 65535)
		case "min":
			svc.MinHandles = num(0, 1<<16)
		case "max":
			svc.MaxHandles = num(1, 1<<16)
		case "inline":
			b, err := strconv.ParseBool(val)
			if err != nil {
				errs.add(d.pos, "//icsgen:service: inline=%s: want true or false", val)
			}
			svc.Inline = b
		default:
			errs.add(d.pos, "//icsgen:service: unknown key %q (want name, channel, subservice, version, min, max, inline)", key)
		}
	}
	for _, need := range []string{"channel", "subservice", "version"} {
		if !got[need] {
			errs.add(d.pos, "//icsgen:service: %s= is required", need)
		}
	}
	if svc.MinHandles > svc.MaxHandles {
		errs.add(d.pos, "//icsgen:service: min=%d is more than max=%d", svc.MinHandles, svc.MaxHandles)
	}
}

// buildMethod validates one interface method. The method comes back even
// when it is not ok, with its procedure number (-1 if it has none).
func (p *pkg) buildMethod(name string, f *ast.Field, ft *ast.FuncType, ctxName, engName string, r *resolver, errs *errList) (*Method, bool) {
	m := &Method{Name: name, Proc: -1, Pos: p.fset.Position(f.Pos())}
	for _, d := range directives(f.Doc) {
		switch d.verb {
		case "proc":
			n := -1
			if len(d.args) == 1 {
				if v, err := strconv.Atoi(d.args[0]); err == nil {
					n = v
				}
			}
			if n < 0 || n > MaxProc {
				errs.add(d.pos, "method %s: //icsgen:proc wants one procedure number in 0..%d", name, MaxProc)
				return m, false
			}
			m.Proc = n
		case "oneway":
			if len(d.args) != 0 {
				errs.add(d.pos, "method %s: //icsgen:oneway takes no arguments", name)
			}
			m.OneWay = true
		default:
			errs.add(d.pos, "method %s: unknown directive //icsgen:%s (want proc or oneway)", name, d.verb)
		}
	}
	ok := true
	if m.Proc < 0 {
		errs.add(f.Pos(), "method %s has no //icsgen:proc N line", name)
		ok = false
	}
	params := flatten(ft.Params)
	if len(params) == 0 || !isSelector(params[0].typ, ctxName, "Context") {
		errs.add(f.Pos(), "method %s: the first parameter must be ctx context.Context", name)
		return m, false
	}
	params = params[1:]
	if len(params) > 0 && isSelector(params[0].typ, engName, "NodeNum") {
		m.HasFrom = true // the caller's node number, from the request
		params = params[1:]
	}
	for i, a := range params {
		if _, variadic := a.typ.(*ast.Ellipsis); variadic {
			errs.add(a.typ.Pos(), "method %s: variadic parameters are not supported; use a slice", name)
			ok = false
			continue
		}
		if isSelector(a.typ, engName, "NodeNum") {
			errs.add(a.typ.Pos(), "method %s: engine.NodeNum is only allowed right after ctx, where it receives the caller's node", name)
			ok = false
			continue
		}
		before := len(errs.errs)
		t := r.resolve(a.typ)
		if t == nil {
			errs.prefixSince(before, fmt.Sprintf("method %s, parameter %s: ", name, paramLabel(a.name, i)))
			ok = false
			continue
		}
		m.Params = append(m.Params, Param{Name: a.name, Spell: types.ExprString(a.typ), Type: t})
	}
	results := flatten(ft.Results)
	switch {
	case m.OneWay && len(results) > 0:
		errs.add(f.Pos(), "method %s: a one-way method has no results, not even an error", name)
		return m, false
	case !m.OneWay && len(results) == 0:
		errs.add(f.Pos(), "method %s has no results: mark it //icsgen:oneway, or return error", name)
		return m, false
	case m.OneWay:
	case !isIdent(results[len(results)-1].typ, "error"):
		errs.add(f.Pos(), "method %s: the last result must be error", name)
		return m, false
	}
	for i, a := range results {
		if i == len(results)-1 {
			break // the error
		}
		if isIdent(a.typ, "error") {
			errs.add(a.typ.Pos(), "method %s: error is allowed only as the last result", name)
			ok = false
			continue
		}
		before := len(errs.errs)
		t := r.resolve(a.typ)
		if t == nil {
			errs.prefixSince(before, fmt.Sprintf("method %s, result %s: ", name, paramLabel(a.name, i)))
			ok = false
			continue
		}
		m.Results = append(m.Results, Param{Name: a.name, Spell: types.ExprString(a.typ), Type: t})
	}
	return m, ok
}

// paramLabel names a parameter or result in messages: its name, else its
// position counted from 1.
func paramLabel(name string, i int) string {
	if name != "" {
		return name
	}
	return fmt.Sprintf("#%d", i+1)
}

type namedExpr struct {
	name string
	typ  ast.Expr
}

// flatten turns a field list into one entry per parameter.
func flatten(fl *ast.FieldList) []namedExpr {
	if fl == nil {
		return nil
	}
	var out []namedExpr
	for _, f := range fl.List {
		if len(f.Names) == 0 {
			out = append(out, namedExpr{"", f.Type})
			continue
		}
		for _, n := range f.Names {
			name := n.Name
			if name == "_" {
				name = ""
			}
			out = append(out, namedExpr{name, f.Type})
		}
	}
	return out
}

func isSelector(e ast.Expr, pkgName, sel string) bool {
	s, ok := e.(*ast.SelectorExpr)
	if !ok || pkgName == "" {
		return false
	}
	x, ok := s.X.(*ast.Ident)
	return ok && x.Name == pkgName && s.Sel.Name == sel
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// lowerIdent lowers an identifier's leading capitals the Go way:
// KV -> kv, Forwarder -> forwarder, HTTPServer -> httpServer.
func lowerIdent(s string) string {
	r := []rune(s)
	i := 0
	for i < len(r) && unicode.IsUpper(r[i]) {
		i++
	}
	if i > 1 && i < len(r) {
		i-- // keep the capital that starts the next word
	}
	for j := 0; j < i; j++ {
		r[j] = unicode.ToLower(r[j])
	}
	return string(r)
}
