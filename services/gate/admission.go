package main

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// admission keeps at most cap(slots) unary calls in flight, and sheds on queueing delay, not on
// queue length (CoDel, as in Facebook's RPC servers): while calls have found a free slot within
// the last interval, a call may wait up to burst for one (a short stall of the backend, a burst of
// clients, is absorbed without errors); once none has for a whole interval (a standing queue: the
// backend is past its capacity), a call that cannot start within target of its arrival is refused.
type admission struct {
	slots     chan struct{}
	target    time.Duration
	burst     time.Duration
	interval  time.Duration
	lastFree  atomic.Int64 // unix nanos when a call last found a slot free without waiting
	waiting   atomic.Int64
	overloads atomic.Uint64 // times shedding switched on
	shedding  atomic.Bool
}

func newAdmission(active int, target, burst, interval time.Duration) *admission {
	a := &admission{slots: make(chan struct{}, active), target: target, burst: max(burst, target), interval: interval}
	a.lastFree.Store(time.Now().UnixNano())
	return a
}

// overloaded reports whether no call has found a free slot for a whole interval.
func (a *admission) overloaded(now time.Time) bool {
	late := now.UnixNano()-a.lastFree.Load() > a.interval.Nanoseconds()
	if late && !a.shedding.Swap(true) {
		a.overloads.Add(1)
	} else if !late {
		a.shedding.Store(false)
	}
	return late
}

// enter takes a slot, waiting until target (shedding) or burst (not) after arrived at most: how
// long the call waited, and whether it was admitted (false also when the client left meanwhile).
func (a *admission) enter(ctx context.Context, arrived time.Time) (time.Duration, bool) {
	select {
	case a.slots <- struct{}{}:
		a.lastFree.Store(time.Now().UnixNano())
		a.shedding.Store(false)
		return time.Since(arrived), true
	default:
	}
	limit := a.burst
	if a.overloaded(time.Now()) {
		limit = a.target
	}
	left := limit - time.Since(arrived)
	if left <= 0 {
		return time.Since(arrived), false
	}
	a.waiting.Add(1)
	defer a.waiting.Add(-1)
	timer := time.NewTimer(left)
	defer timer.Stop()
	select {
	case a.slots <- struct{}{}:
		return time.Since(arrived), true
	case <-timer.C:
		return time.Since(arrived), false
	case <-ctx.Done():
		return time.Since(arrived), false
	}
}

// leave gives the slot back; a slot that frees with no call waiting for it counts as free time.
func (a *admission) leave() {
	<-a.slots
	if a.waiting.Load() == 0 {
		a.lastFree.Store(time.Now().UnixNano())
	}
}

// stats is what /metrics exposes (the Prometheus text format, written by hand: four series).
type stats struct {
	mu      sync.Mutex
	calls   map[[2]string]uint64 // (method, outcome) -> count
	methods map[string]bool      // the methods labelled so far (at most maxMethods)
	bounds  []float64            // queue-wait histogram bucket bounds, seconds
	buckets []uint64
	count   uint64
	sum     float64
}

func newStats() *stats {
	b := []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
	return &stats{calls: map[[2]string]uint64{}, methods: map[string]bool{}, bounds: b, buckets: make([]uint64, len(b))}
}

// maxMethods bounds the method label: a client can send any path, and each would be a series.
const maxMethods = 256

func (s *stats) call(method, outcome string) {
	s.mu.Lock()
	key := [2]string{method, outcome}
	if _, seen := s.calls[key]; !seen && !s.methods[method] {
		if len(s.methods) >= maxMethods {
			key[0] = "other"
		} else {
			s.methods[method] = true
		}
	}
	s.calls[key]++
	s.mu.Unlock()
}

// label escapes a Prometheus label value (backslash, double quote, newline).
func label(v string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}

func (s *stats) queued(d time.Duration) {
	v := d.Seconds()
	s.mu.Lock()
	for i, b := range s.bounds {
		if v <= b {
			s.buckets[i]++
		}
	}
	s.count++
	s.sum += v
	s.mu.Unlock()
}

func (s *stats) serve(a *admission) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		var b strings.Builder
		s.mu.Lock()
		keys := make([][2]string, 0, len(s.calls))
		for k := range s.calls {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
		b.WriteString("# HELP tuneforge_gate_calls_total Calls the gate passed or refused, by method and outcome (a gRPC code, or overloaded).\n")
		b.WriteString("# TYPE tuneforge_gate_calls_total counter\n")
		for _, k := range keys {
			fmt.Fprintf(&b, "tuneforge_gate_calls_total{method=\"%s\",outcome=\"%s\"} %d\n", label(k[0]), label(k[1]), s.calls[k])
		}
		b.WriteString("# HELP tuneforge_gate_queue_seconds How long unary calls waited for a slot.\n")
		b.WriteString("# TYPE tuneforge_gate_queue_seconds histogram\n")
		for i, bound := range s.bounds {
			fmt.Fprintf(&b, "tuneforge_gate_queue_seconds_bucket{le=\"%g\"} %d\n", bound, s.buckets[i])
		}
		fmt.Fprintf(&b, "tuneforge_gate_queue_seconds_bucket{le=\"+Inf\"} %d\n", s.count)
		fmt.Fprintf(&b, "tuneforge_gate_queue_seconds_sum %g\ntuneforge_gate_queue_seconds_count %d\n", s.sum, s.count)
		s.mu.Unlock()
		b.WriteString("# HELP tuneforge_gate_active_calls Unary calls in flight to the backend.\n")
		b.WriteString("# TYPE tuneforge_gate_active_calls gauge\n")
		fmt.Fprintf(&b, "tuneforge_gate_active_calls %d\n", len(a.slots))
		b.WriteString("# HELP tuneforge_gate_waiting_calls Unary calls waiting for a slot.\n")
		b.WriteString("# TYPE tuneforge_gate_waiting_calls gauge\n")
		fmt.Fprintf(&b, "tuneforge_gate_waiting_calls %d\n", a.waiting.Load())
		b.WriteString("# HELP tuneforge_gate_overloads_total Times the gate started shedding (no free slot for a whole interval).\n")
		b.WriteString("# TYPE tuneforge_gate_overloads_total counter\n")
		fmt.Fprintf(&b, "tuneforge_gate_overloads_total %d\n", a.overloads.Load())
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(b.String()))
	}
}
