package load

import "time"

// window smooths samples: per key (an allocation ID, or the node) it keeps
// the samples of the last span and reports their mean. It is not safe for
// concurrent use; the Sampler guards it.
type window struct {
	span   time.Duration
	series map[string][]sample
}

type sample struct {
	at    time.Time
	value Resources
}

// newWindow returns a window over span. A span of zero or less keeps only
// the latest sample: no smoothing.
func newWindow(span time.Duration) *window {
	return &window{span: span, series: make(map[string][]sample)}
}

// add records value for key at time at, and forgets the key's samples taken
// span or longer before at. Samples are expected in time order.
func (w *window) add(key string, at time.Time, value Resources) {
	s := append(w.series[key], sample{at: at, value: value})
	cutoff := at.Add(-w.span)
	drop := 0
	for drop < len(s)-1 && (w.span <= 0 || !s[drop].at.After(cutoff)) {
		drop++
	}
	if drop > 0 {
		// Copy rather than reslice, so the backing array does not grow
		// without bound.
		s = append(s[:0:0], s[drop:]...)
	}
	w.series[key] = s
}

// mean returns the mean of key's samples and how many it covers: zero and 0
// for a key without samples.
func (w *window) mean(key string) (Resources, int) {
	s := w.series[key]
	if len(s) == 0 {
		return Resources{}, 0
	}
	var sum Resources
	for _, x := range s {
		sum = sum.add(x.value)
	}
	n := float64(len(s))
	return Resources{CPU: sum.CPU / n, MemoryMB: sum.MemoryMB / n}, len(s)
}

// retain forgets every key for which keep returns false, e.g. allocations
// that are gone from the node.
func (w *window) retain(keep func(key string) bool) {
	for k := range w.series {
		if !keep(k) {
			delete(w.series, k)
		}
	}
}

// len is the number of keys with samples.
func (w *window) len() int { return len(w.series) }
