package gen

import (
	"go/ast"
	"go/types"
)

// resolver turns type expressions into Types, reporting what icsgen cannot
// marshal at the position where it is written.
type resolver struct {
	p      *pkg
	errs   *errList
	cache  map[string]*Type // named types of the package, resolved or in progress
	active map[string]bool  // named types being resolved: seeing one again is recursion
}

// resolve returns nil after reporting an error.
func (r *resolver) resolve(e ast.Expr) *Type {
	switch e := e.(type) {
	case *ast.ParenExpr:
		return r.resolve(e.X)
	case *ast.Ident:
		if k, ok := basics[e.Name]; ok {
			if _, shadowed := r.p.types[e.Name]; !shadowed {
				return &Type{Kind: k}
			}
		}
		switch e.Name {
		case "error":
			r.errs.add(e.Pos(), "error is only supported as the last result")
			return nil
		case "any", "uintptr", "complex64", "complex128":
			r.errs.add(e.Pos(), "unsupported type %s", e.Name)
			return nil
		}
		return r.named(e)
	case *ast.ArrayType:
		if e.Len != nil {
			r.errs.add(e.Pos(), "unsupported type %s: arrays are not supported; use a slice", types.ExprString(e))
			return nil
		}
		elem := r.resolve(e.Elt)
		if elem == nil {
			return nil
		}
		if elem.Kind == KUint8 && elem.Named == "" {
			return &Type{Kind: KBytes}
		}
		return &Type{Kind: KSlice, Elem: elem}
	case *ast.MapType:
		key, val := r.resolve(e.Key), r.resolve(e.Value)
		if key == nil || val == nil {
			return nil
		}
		if !(key.Kind <= KUint || key.Kind == KString) {
			r.errs.add(e.Key.Pos(), "unsupported map key type %s: keys must be bool, integer or string", types.ExprString(e.Key))
			return nil
		}
		return &Type{Kind: KMap, Key: key, Elem: val}
	case *ast.StarExpr:
		r.errs.add(e.Pos(), "unsupported type %s: pointers are not supported; pass the value", types.ExprString(e))
	case *ast.SelectorExpr:
		r.errs.add(e.Pos(), "unsupported type %s: icsgen marshals only types declared in this package", types.ExprString(e))
	case *ast.StructType:
		r.errs.add(e.Pos(), "unsupported anonymous struct: declare a named struct type in this package")
	case *ast.InterfaceType:
		r.errs.add(e.Pos(), "unsupported type %s: interfaces cannot be marshalled", types.ExprString(e))
	default:
		r.errs.add(e.Pos(), "unsupported type %s", types.ExprString(e))
	}
	return nil
}

// named resolves a type declared in the package.
func (r *resolver) named(id *ast.Ident) *Type {
	if r.active[id.Name] {
		// Decoding a recursive type would recurse as deep as the input
		// nests, and a hostile input nests millions deep: refuse it.
		r.errs.add(id.Pos(), "unsupported recursive type %s: its decoding depth could not be bounded", id.Name)
		return nil
	}
	if t, ok := r.cache[id.Name]; ok {
		return t
	}
	ts, ok := r.p.types[id.Name]
	if !ok {
		r.errs.add(id.Pos(), "unknown type %s: not declared in package %s", id.Name, r.p.name)
		return nil
	}
	if ts.TypeParams != nil {
		r.errs.add(id.Pos(), "unsupported type %s: generic types are not supported", id.Name)
		return nil
	}
	if ts.Assign.IsValid() { // an alias stands for its target
		return r.resolve(ts.Type)
	}
	t := &Type{Named: id.Name}
	r.active[id.Name] = true
	defer delete(r.active, id.Name)
	r.cache[id.Name] = t
	defer r.errs.prefixSince(len(r.errs.errs), "type "+id.Name+": ")
	if st, ok := ts.Type.(*ast.StructType); ok {
		t.Kind = KStruct
		before := len(r.errs.errs)
		r.fields(t, ts, st)
		if len(r.errs.errs) > before {
			return nil // its fields' errors say what is wrong
		}
		if len(t.Fields) == 0 {
			r.errs.add(ts.Pos(), "a struct with no fields to marshal")
			return nil
		}
		return t
	}
	under := r.resolve(ts.Type)
	if under == nil {
		delete(r.cache, id.Name)
		return nil
	}
	if under.Kind == KStruct { // type A B, B a struct: A has B's fields
		t.Kind, t.Fields = KStruct, under.Fields
		return t
	}
	t.Kind, t.Elem, t.Key = under.Kind, under.Elem, under.Key
	return t
}

func (r *resolver) fields(t *Type, ts *ast.TypeSpec, st *ast.StructType) {
	for _, f := range st.Fields.List {
		if len(f.Names) == 0 {
			r.errs.add(f.Pos(), "struct %s: embedded field %s is not supported; name it", ts.Name.Name, types.ExprString(f.Type))
			continue
		}
		before := len(r.errs.errs)
		ft := r.resolve(f.Type)
		if ft == nil {
			r.errs.prefixSince(before, "field "+f.Names[0].Name+": ")
			continue
		}
		for _, n := range f.Names {
			if n.Name == "_" {
				continue // blank fields cannot be read or set
			}
			t.Fields = append(t.Fields, Field{Name: n.Name, Type: ft})
		}
	}
}
