//go:build linux

package realsystemd

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Entry is one journal entry: its fields as strings (journalctl -o json;
// binary fields are decoded from their byte arrays).
type Entry map[string]string

// PID returns the entry's _PID field, or 0.
func (e Entry) PID() int {
	n, _ := strconv.Atoi(e["_PID"])
	return n
}

// String formats the entry as a journal line with the fields that say who
// logged it: "[_PID=… _SYSTEMD_UNIT=… UNIT=…] MESSAGE".
func (e Entry) String() string {
	var b strings.Builder
	b.WriteString("[")
	for i, k := range []string{"_PID", "_SYSTEMD_UNIT", "UNIT"} {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%s", k, e[k])
	}
	b.WriteString("] ")
	b.WriteString(e["MESSAGE"])
	return b.String()
}

// Journal returns the journal entries that journalctl, run inside with
// args (for example "-u", unit, or "--after-cursor", c), prints.
func (s *System) Journal(args ...string) ([]Entry, error) {
	out, err := s.Run("journalctl", append([]string{"--no-pager", "-o", "json"}, args...)...)
	if err != nil {
		return nil, err
	}
	return parseJournal(out)
}

func parseJournal(out string) ([]Entry, error) {
	var entries []Entry
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var raw map[string]any
		if err := json.Unmarshal(line, &raw); err != nil {
			return nil, fmt.Errorf("journalctl -o json: %w in %q", err, line)
		}
		e := Entry{}
		for k, v := range raw {
			e[k] = fieldText(v)
		}
		entries = append(entries, e)
	}
	return entries, sc.Err()
}

// fieldText turns a journal field as journalctl's JSON has it into text: a
// string, an array of bytes (a field that is not valid UTF-8), or an array
// of those (a field that occurs more than once; the values are joined by
// newlines).
func fieldText(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []any:
		if len(v) > 0 {
			if _, ok := v[0].(float64); ok {
				b := make([]byte, len(v))
				for i, x := range v {
					f, _ := x.(float64)
					b[i] = byte(f)
				}
				return string(b)
			}
		}
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = fieldText(x)
		}
		return strings.Join(parts, "\n")
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// Cursor returns the cursor of the journal's last entry, for a later
// Journal("--after-cursor", c).
func (s *System) Cursor() (string, error) {
	entries, err := s.Journal("-n", "1")
	if err != nil {
		return "", err
	}
	if len(entries) == 0 {
		return "", fmt.Errorf("realsystemd: the journal is empty")
	}
	return entries[len(entries)-1]["__CURSOR"], nil
}

// WaitJournal polls the journal (journalctl -o json args…) until ok
// accepts what it holds, or until timeout; it returns the entries it saw
// last. journald reads what services write asynchronously: a line written
// a moment ago may not be there yet.
func (s *System) WaitJournal(timeout time.Duration, ok func([]Entry) bool, args ...string) ([]Entry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		entries, err := s.Journal(args...)
		if err == nil && ok(entries) {
			return entries, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("realsystemd: the journal (journalctl %s) did not show what was waited for in %v", strings.Join(args, " "), timeout)
			}
			return entries, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}
