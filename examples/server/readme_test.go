package main

import (
	"os"
	"strings"
	"testing"
)

// TestREADME checks that the README's code block is this program's main,
// between its markers, so that the tests that run this program test what
// the README tells users to write.
func TestREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	want := between(t, string(readme), "## Use\n\n```go\n", "```\n", "README.md")
	body := between(t, string(src), "\t// README begins\n", "\t// README ends\n", "main.go")
	var got strings.Builder
	for _, line := range strings.SplitAfter(body, "\n") {
		got.WriteString(strings.TrimPrefix(line, "\t"))
	}
	if got.String() != want {
		t.Errorf("README.md's code block under \"## Use\" differs from main.go between its markers.\nREADME.md:\n%s\nmain.go:\n%s", want, got.String())
	}
}

func between(t *testing.T, s, start, end, name string) string {
	t.Helper()
	i := strings.Index(s, start)
	if i < 0 {
		t.Fatalf("%s has no %q", name, start)
	}
	s = s[i+len(start):]
	j := strings.Index(s, end)
	if j < 0 {
		t.Fatalf("%s has no %q after %q", name, end, start)
	}
	return s[:j]
}
