package config

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/ferry-nomad/ferry/companion/config/field"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// The file's schema is the hcl tags of Config and of the types it holds, as
// gohcl writes them: an attribute is `hcl:"name,optional"`, a block
// `hcl:"name,block"`, and a struct tagged `hcl:",remain"` is written flat
// in the block that holds it. Beyond gohcl:
//
//   - a time.Duration is written as a string, such as "30s";
//   - a block tagged label:"name" is written once per label, and its struct
//     has one field per label, tagged with it: threshold "cpu" { ... } is
//     Thresholds.CPU, tagged `hcl:"cpu"`;
//   - such a field may be a pointer, set only if its block is written: the
//     labels are a choice, target "eligibility" {} is Target.Eligibility.
//     Once the file writes any of the struct's blocks, those it does not
//     write are nil: the file's choice replaces the default's;
//   - a block that is a map keyed by string, tagged label:"name", takes any
//     label, each block being the entry it keys: capacity "gpu" { ... } is
//     Capacity["gpu"];
//   - decoding is in place: whatever the file leaves out keeps its value,
//     so that a file need only write what it changes. A block the file
//     writes where there was none, a map entry or a nil pointer, starts
//     from its type's default in blockDefaults, else from the zero value.

// tagged is one field of a struct in the file.
type tagged struct {
	index []int  // of the field in the struct, through any remain field
	name  string // in the file
	block bool
	label string // the name of a labelled block's label
}

// fieldsOf are the attributes and blocks of a struct type.
func fieldsOf(t reflect.Type) []tagged {
	var out []tagged
	for i := range t.NumField() {
		sf := t.Field(i)
		tag, ok := sf.Tag.Lookup("hcl")
		if !ok {
			continue
		}
		name, kind, _ := strings.Cut(tag, ",")
		switch kind {
		case "optional":
			out = append(out, tagged{index: []int{i}, name: name})
		case "block":
			label := sf.Tag.Get("label")
			if sf.Type.Kind() == reflect.Map && (label == "" || sf.Type.Key().Kind() != reflect.String) {
				panic(fmt.Sprintf("config: %s.%s: a map block must be keyed by string and tagged label:\"name\"", t, sf.Name))
			}
			out = append(out, tagged{index: []int{i}, name: name, block: true, label: label})
		case "remain":
			for _, f := range fieldsOf(sf.Type) {
				f.index = append([]int{i}, f.index...)
				out = append(out, f)
			}
		default:
			panic(fmt.Sprintf("config: %s.%s: hcl tag %q is none of name,optional, name,block and ,remain", t, sf.Name, tag))
		}
	}
	return out
}

// labelsOf are the labels a labelled block's struct type takes, each with
// its field's index.
func labelsOf(t reflect.Type) (names []string, index map[string]int) {
	index = map[string]int{}
	for i := range t.NumField() {
		if name := t.Field(i).Tag.Get("hcl"); name != "" {
			names = append(names, name)
			index[name] = i
		}
	}
	return names, index
}

// attributes calls fn with each attribute of v, a struct at path in the
// file, and its name there: the schema's leaves, as far as v holds them. A
// nil pointer has none; a map has its entries', by label, which are copies
// that cannot be set.
func attributes(v reflect.Value, path field.Path, fn func(field.Path, reflect.Value)) {
	for _, f := range fieldsOf(v.Type()) {
		fv, at := v.FieldByIndex(f.index), path.Child(f.name)
		switch {
		case !f.block:
			fn(at, fv)
		case f.label == "":
			attributes(fv, at, fn)
		case fv.Kind() == reflect.Map:
			keys := fv.MapKeys()
			slices.SortFunc(keys, func(a, b reflect.Value) int { return cmp.Compare(a.String(), b.String()) })
			for _, k := range keys {
				attributes(fv.MapIndex(k), at.Label(k.String()), fn)
			}
		default:
			names, index := labelsOf(fv.Type())
			for _, l := range names {
				lv := fv.Field(index[l])
				if lv.Kind() == reflect.Pointer {
					if lv.IsNil() {
						continue
					}
					lv = lv.Elem()
				}
				attributes(lv, at.Label(l), fn)
			}
		}
	}
}

// fields are c's attributes by their names in the file.
func (c *Config) fields() map[field.Path]reflect.Value {
	m := map[field.Path]reflect.Value{}
	attributes(reflect.ValueOf(c).Elem(), "", func(p field.Path, v reflect.Value) { m[p] = v })
	return m
}

// decode decodes body into v, a struct at path in the file. Attributes and
// blocks it does not know are errors.
func decode(body hcl.Body, v reflect.Value, path field.Path) hcl.Diagnostics {
	fields := fieldsOf(v.Type())
	schema := &hcl.BodySchema{}
	for _, f := range fields {
		switch {
		case !f.block:
			schema.Attributes = append(schema.Attributes, hcl.AttributeSchema{Name: f.name})
		case f.label == "":
			schema.Blocks = append(schema.Blocks, hcl.BlockHeaderSchema{Type: f.name})
		default:
			schema.Blocks = append(schema.Blocks, hcl.BlockHeaderSchema{Type: f.name, LabelNames: []string{f.label}})
		}
	}
	content, diags := body.Content(schema)
	blocks := content.Blocks.ByType()
	for _, f := range fields {
		fv, at := v.FieldByIndex(f.index), path.Child(f.name)
		switch bs := blocks[f.name]; {
		case !f.block:
			if a := content.Attributes[f.name]; a != nil {
				diags = append(diags, decodeAttribute(a.Expr, fv, at)...)
			}
		case f.label != "" && fv.Kind() == reflect.Map:
			diags = append(diags, decodeMap(bs, fv, at)...)
		case f.label != "":
			diags = append(diags, decodeLabelled(bs, fv, at, f.label)...)
		case len(bs) > 1:
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("Duplicate %s block", f.name),
				Detail:   fmt.Sprintf("Only one %s block is allowed. Another was defined at %s.", f.name, where(bs[0].DefRange)),
				Subject:  &bs[1].DefRange,
			})
		case len(bs) == 1:
			diags = append(diags, decode(bs[0].Body, fv, at)...)
		}
	}
	return diags
}

// decodeLabelled decodes the blocks, each labelled, into the fields of v
// their labels name. If it writes any, the pointer fields it does not write
// are set to nil.
func decodeLabelled(blocks hcl.Blocks, v reflect.Value, path field.Path, label string) hcl.Diagnostics {
	var diags hcl.Diagnostics
	names, index := labelsOf(v.Type())
	first := map[string]hcl.Range{}
	for _, b := range blocks {
		l, r := b.Labels[0], b.LabelRanges[0]
		at := path.Label(l)
		i, known := index[l]
		prev, twice := first[l]
		switch {
		case !known:
			diags = append(diags, errorAt(r, "%s: unknown %s; %ss are %s", at, label, b.Type, quoteList(names)))
		case twice:
			diags = append(diags, writtenTwice(r, at, prev))
		default:
			first[l] = r
			fv := v.Field(i)
			if fv.Kind() == reflect.Pointer {
				if fv.IsNil() {
					fv.Set(newBlock(fv.Type().Elem()).Addr())
				}
				fv = fv.Elem()
			}
			diags = append(diags, decode(b.Body, fv, at)...)
		}
	}
	if len(first) > 0 { // the file's choice replaces the default's
		for l, i := range index {
			if _, written := first[l]; !written && v.Field(i).Kind() == reflect.Pointer {
				v.Field(i).SetZero()
			}
		}
	}
	return diags
}

// decodeMap decodes the blocks, each labelled, into the entries of v, a
// map, that their labels key.
func decodeMap(blocks hcl.Blocks, v reflect.Value, path field.Path) hcl.Diagnostics {
	var diags hcl.Diagnostics
	first := map[string]hcl.Range{}
	for _, b := range blocks {
		l, r := b.Labels[0], b.LabelRanges[0]
		at := path.Label(l)
		if prev, twice := first[l]; twice {
			diags = append(diags, writtenTwice(r, at, prev))
			continue
		}
		first[l] = r
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		key := reflect.ValueOf(l).Convert(v.Type().Key())
		entry := newBlock(v.Type().Elem())
		if old := v.MapIndex(key); old.IsValid() {
			entry.Set(old)
		}
		diags = append(diags, decode(b.Body, entry, at)...)
		v.SetMapIndex(key, entry)
	}
	return diags
}

// newBlock is a new, settable value of t for a block the file writes where
// there was none: t's default in blockDefaults, else the zero value.
func newBlock(t reflect.Type) reflect.Value {
	v := reflect.New(t).Elem()
	if def, ok := blockDefaults[t]; ok {
		v.Set(reflect.ValueOf(def()))
	}
	return v
}

// writtenTwice is the error of the block at path, labelled at r, that was
// written at first already.
func writtenTwice(r hcl.Range, path field.Path, first hcl.Range) *hcl.Diagnostic {
	return errorAt(r, "%s: written twice; the first is at %s", path, where(first))
}

var durationType = reflect.TypeFor[time.Duration]()

// decodeAttribute decodes expr into v, the attribute at path. A null is as
// if the attribute were left out.
func decodeAttribute(expr hcl.Expression, v reflect.Value, path field.Path) hcl.Diagnostics {
	val, diags := expr.Value(nil)
	if diags.HasErrors() || val.IsNull() {
		return diags
	}
	if v.Type() != durationType {
		return gohcl.DecodeExpression(expr, nil, v.Addr().Interface())
	}
	var s string
	if diags := gohcl.DecodeExpression(expr, nil, &s); diags.HasErrors() {
		return diags
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return hcl.Diagnostics{errorAt(expr.Range(), `%s: %q is not a duration, e.g. "30s" or "10m"`, path, s)}
	}
	v.SetInt(int64(d))
	return nil
}

func errorAt(r hcl.Range, format string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf(format, args...), Subject: &r}
}

// quoteList is `"a"`, `"a" and "b"` or `"a", "b" and "c"`.
func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	if len(q) < 2 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " and " + q[len(q)-1]
}

// diagErrors turns HCL's errors into one error each, in the order of the
// file, each starting with file:line,column. Of several errors at one
// place, only the first is kept: the others follow from it.
func diagErrors(path string, diags hcl.Diagnostics) []error {
	diags = slices.Clone(diags)
	pos := func(d *hcl.Diagnostic) int {
		if d.Subject == nil {
			return -1
		}
		return d.Subject.Start.Byte
	}
	slices.SortStableFunc(diags, func(a, b *hcl.Diagnostic) int { return cmp.Compare(pos(a), pos(b)) })
	var errs []error
	seen := map[string]bool{}
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		at := path
		if d.Subject != nil {
			at = where(*d.Subject)
			if seen[at] {
				continue
			}
			seen[at] = true
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += "; " + d.Detail
		}
		errs = append(errs, fmt.Errorf("%s: %s", at, msg))
	}
	return errs
}

// where is a position in the file as file:line,column.
func where(r hcl.Range) string {
	return fmt.Sprintf("%s:%d,%d", r.Filename, r.Start.Line, r.Start.Column)
}
