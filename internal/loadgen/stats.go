package loadgen

import (
	"slices"
	"time"
)

// Latency summarises request latencies.
type Latency struct {
	Count  int           `json:"count"`
	Median time.Duration `json:"median_ns"`
	P99    time.Duration `json:"p99_ns"`
	Max    time.Duration `json:"max_ns"`
}

// Summarize returns the count, median, 99th percentile and maximum of ds,
// each a value of ds (nearest rank). ds is not modified.
func Summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return Latency{
		Count:  len(s),
		Median: Percentile(s, 50),
		P99:    Percentile(s, 99),
		Max:    s[len(s)-1],
	}
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method, or 0 when sorted is empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// rank = ceil(p/100 * n), 1-based.
	rank := int(p / 100 * float64(len(sorted)))
	if float64(rank) < p/100*float64(len(sorted)) {
		rank++
	}
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// Failures counts the failed records of r by outcome; OK is not included.
func (r *Result) Failures() map[Outcome]int {
	m := map[Outcome]int{}
	for _, rec := range r.Records {
		if rec.Outcome != OK {
			m[rec.Outcome]++
		}
	}
	return m
}

// Latencies returns the latencies of the successful records for which keep
// returns true (all of them when keep is nil).
func (r *Result) Latencies(keep func(Record) bool) []time.Duration {
	var ds []time.Duration
	for _, rec := range r.Records {
		if rec.Outcome == OK && (keep == nil || keep(rec)) {
			ds = append(ds, rec.Latency)
		}
	}
	return ds
}
