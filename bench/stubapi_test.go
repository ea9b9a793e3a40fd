package main

import (
	"reflect"
	"testing"

	cftesting "github.com/cloudflare/tableflip/testing"
	//lint:ignore SA1019 the deprecated stub is what this test compares
	tftesting "github.com/seed589fcc9d/tableflip/testing"
)

// The testing package has the API of cloudflare/tableflip's testing
// stub, v1.2.3, which is this module's: every function and method, with
// the same parameters and results.
func TestTestingStubAPI(t *testing.T) {
	for _, tt := range []struct {
		name     string
		cf, ours reflect.Type
	}{
		{"New", reflect.TypeOf(cftesting.New), reflect.TypeOf(tftesting.New)},
		{"*Upgrader", reflect.TypeOf(&cftesting.Upgrader{}), reflect.TypeOf(&tftesting.Upgrader{})},
		{"*Fds", reflect.TypeOf(&cftesting.Fds{}), reflect.TypeOf(&tftesting.Fds{})},
	} {
		if tt.cf.Kind() == reflect.Func {
			if got, want := signature(tt.ours, 0), signature(tt.cf, 0); got != want {
				t.Errorf("%s: %s, want %s", tt.name, got, want)
			}
			continue
		}
		for i := range tt.cf.NumMethod() {
			m := tt.cf.Method(i)
			o, ok := tt.ours.MethodByName(m.Name)
			if !ok {
				t.Errorf("%s has no method %s", tt.name, m.Name)
				continue
			}
			// Both receivers print as *testing.Upgrader or *testing.Fds.
			if got, want := signature(o.Type, 1), signature(m.Type, 1); got != want {
				t.Errorf("%s.%s: %s, want %s", tt.name, m.Name, got, want)
			}
		}
	}
	if f, ok := reflect.TypeOf(tftesting.Upgrader{}).FieldByName("Fds"); !ok || !f.Anonymous || f.Type != reflect.TypeOf(&tftesting.Fds{}) {
		t.Errorf("Upgrader does not embed *Fds as cloudflare's does: %+v", f)
	}
}

// signature prints the parameters (from the first to print) and results
// of a function type.
func signature(f reflect.Type, first int) string {
	s := "func("
	for i := first; i < f.NumIn(); i++ {
		if i > first {
			s += ", "
		}
		s += f.In(i).String()
	}
	s += ") ("
	for i := range f.NumOut() {
		if i > 0 {
			s += ", "
		}
		s += f.Out(i).String()
	}
	return s + ")"
}
