package engine

import (
	"bytes"
	"io"
	"strings"

	"github.com/VictoriaMetrics/metrics"
)

// WriteProcessMetrics writes the Go runtime (go_*) and process (process_*)
// families of metrics.WriteProcessMetrics, each with its HELP and TYPE
// lines, which the library writes only behind its process-wide
// metrics.ExposeMetadata switch and then with empty help text, and with
// process_io_*_total typed as gauges. A /metrics endpoint writes it after
// its set. The names are the library's, which its dashboards query, but
// for the three runtimeRenames gives: promtool rejects them (a counter
// must end in _total, and nothing but a histogram's or summary's series
// in _count). runtimeFamilies documents each one. A family the library adds in a later
// version is written without metadata until runtimeFamilies lists it (the
// admin and cinode tests lint a whole scrape and say which).
func WriteProcessMetrics(w io.Writer) {
	var raw bytes.Buffer
	metrics.WriteProcessMetrics(&raw)
	var out bytes.Buffer
	done := map[string]bool{}
	current := ""
	for line := range bytes.Lines(raw.Bytes()) {
		if len(line) == 0 || line[0] == '#' {
			continue // the library's own metadata, if the switch is on
		}
		name := string(line)
		if i := strings.IndexAny(name, "{ "); i >= 0 {
			name = name[:i]
		}
		if to, ok := runtimeRenames[name]; ok {
			line = append([]byte(to), line[len(name):]...)
			name = to
		}
		fam := runtimeFamily(name)
		if fam != current && !done[fam] {
			d := runtimeFamilies[fam]
			writeMetadata(&out, fam, d.typ, d.help)
			done[fam] = true
		}
		current = fam
		out.Write(line)
	}
	_, _ = w.Write(out.Bytes())
}

// runtimeFamily is the family a runtime series belongs to: a histogram's
// or summary's _bucket, _sum and _count series belong to it.
func runtimeFamily(series string) string {
	if _, ok := runtimeFamilies[series]; ok {
		return series
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(series, suffix); ok {
			if d := runtimeFamilies[base]; d.typ == "histogram" || d.typ == "summary" {
				return base
			}
		}
	}
	return series
}

// runtimeRenames are the library's names that break Prometheus' naming
// rules, and the names WriteProcessMetrics gives them instead
// (docs/ADMIN.md, "Metrics").
var runtimeRenames = map[string]string{
	"go_cgo_calls_count": "go_cgo_calls_total", // a counter
	"go_gc_forced_count": "go_gc_forced_total", // a counter
	"go_cpu_count":       "go_cpus",            // a gauge
}

// runtimeFamilies documents what metrics.WriteProcessMetrics writes (Linux
// and the other platforms it supports): names from the library, help text
// from the runtime/metrics, runtime.MemStats and proc(5) documentation.
var runtimeFamilies = map[string]familyDoc{
	// Go runtime: runtime/metrics.
	"go_sched_latencies_seconds":          {"histogram", "Time goroutines spent runnable before running (runtime/metrics /sched/latencies:seconds); no _sum or _count, the runtime does not keep them."},
	"go_mutex_wait_seconds_total":         {"counter", "Time goroutines spent blocked on a sync.Mutex or sync.RWMutex (runtime/metrics /sync/mutex/wait/total:seconds)."},
	"go_gc_mark_assist_cpu_seconds_total": {"counter", "CPU time goroutines spent helping the GC mark (runtime/metrics /cpu/classes/gc/mark/assist:cpu-seconds)."},
	"go_gc_cpu_seconds_total":             {"counter", "CPU time spent in the GC (runtime/metrics /cpu/classes/gc/total:cpu-seconds)."},
	"go_gc_pauses_seconds":                {"histogram", "Stop-the-world GC pause durations (runtime/metrics /gc/pauses:seconds); no _sum or _count, the runtime does not keep them."},
	"go_scavenge_cpu_seconds_total":       {"counter", "CPU time spent returning unused memory to the OS (runtime/metrics /cpu/classes/scavenge/total:cpu-seconds)."},
	"go_memlimit_bytes":                   {"gauge", "The Go runtime's soft memory limit (GOMEMLIMIT, debug.SetMemoryLimit) in bytes."},

	// Go runtime: runtime.MemStats and friends.
	"go_memstats_alloc_bytes":          {"gauge", "Bytes of heap objects allocated and not yet freed (MemStats.Alloc)."},
	"go_memstats_alloc_bytes_total":    {"counter", "Bytes allocated for heap objects since the process started (MemStats.TotalAlloc)."},
	"go_memstats_buck_hash_sys_bytes":  {"gauge", "Bytes of memory in profiling bucket hash tables (MemStats.BuckHashSys)."},
	"go_memstats_frees_total":          {"counter", "Heap objects freed since the process started (MemStats.Frees)."},
	"go_memstats_gc_cpu_fraction":      {"gauge", "Fraction (0 to 1) of this program's CPU time used by the GC since the process started (MemStats.GCCPUFraction)."},
	"go_memstats_gc_sys_bytes":         {"gauge", "Bytes of memory in GC metadata (MemStats.GCSys)."},
	"go_memstats_heap_alloc_bytes":     {"gauge", "Bytes of allocated heap objects, reachable or not yet swept (MemStats.HeapAlloc)."},
	"go_memstats_heap_idle_bytes":      {"gauge", "Bytes in idle (unused) heap spans (MemStats.HeapIdle)."},
	"go_memstats_heap_inuse_bytes":     {"gauge", "Bytes in in-use heap spans (MemStats.HeapInuse)."},
	"go_memstats_heap_objects":         {"gauge", "Number of allocated heap objects (MemStats.HeapObjects)."},
	"go_memstats_heap_released_bytes":  {"gauge", "Bytes of physical memory returned to the OS (MemStats.HeapReleased)."},
	"go_memstats_heap_sys_bytes":       {"gauge", "Bytes of heap memory obtained from the OS (MemStats.HeapSys)."},
	"go_memstats_last_gc_time_seconds": {"gauge", "When the last GC finished, in seconds since the Unix epoch (MemStats.LastGC)."},
	"go_memstats_lookups_total":        {"counter", "Pointer lookups performed by the runtime (MemStats.Lookups)."},
	"go_memstats_mallocs_total":        {"counter", "Heap objects allocated since the process started (MemStats.Mallocs)."},
	"go_memstats_mcache_inuse_bytes":   {"gauge", "Bytes of allocated mcache structures (MemStats.MCacheInuse)."},
	"go_memstats_mcache_sys_bytes":     {"gauge", "Bytes of memory obtained from the OS for mcache structures (MemStats.MCacheSys)."},
	"go_memstats_mspan_inuse_bytes":    {"gauge", "Bytes of allocated mspan structures (MemStats.MSpanInuse)."},
	"go_memstats_mspan_sys_bytes":      {"gauge", "Bytes of memory obtained from the OS for mspan structures (MemStats.MSpanSys)."},
	"go_memstats_next_gc_bytes":        {"gauge", "Heap size in bytes at which the next GC starts (MemStats.NextGC)."},
	"go_memstats_other_sys_bytes":      {"gauge", "Bytes of memory in miscellaneous off-heap runtime allocations (MemStats.OtherSys)."},
	"go_memstats_stack_inuse_bytes":    {"gauge", "Bytes in stack spans (MemStats.StackInuse)."},
	"go_memstats_stack_sys_bytes":      {"gauge", "Bytes of stack memory obtained from the OS (MemStats.StackSys)."},
	"go_memstats_sys_bytes":            {"gauge", "Total bytes of memory obtained from the OS by the Go runtime (MemStats.Sys)."},
	"go_cgo_calls_total":               {"counter", "Cgo calls made by this process (runtime.NumCgoCall); VictoriaMetrics/metrics calls it go_cgo_calls_count."},
	"go_cpus":                          {"gauge", "Logical CPUs usable by this process (runtime.NumCPU); VictoriaMetrics/metrics calls it go_cpu_count."},
	"go_gc_duration_seconds":           {"summary", "GC stop-the-world pause durations over the last 256 GCs, as quantiles (MemStats.PauseNs); _sum and _count over all GCs."},
	"go_gc_forced_total":               {"counter", "GCs forced by the application calling runtime.GC (MemStats.NumForcedGC); VictoriaMetrics/metrics calls it go_gc_forced_count."},
	"go_gomaxprocs":                    {"gauge", "Threads that may run Go code at once (GOMAXPROCS)."},
	"go_goroutines":                    {"gauge", "Goroutines that exist now."},
	"go_threads":                       {"gauge", "OS threads the Go runtime has created."},
	"go_info":                          {"gauge", "Always 1; the version label is the Go version this binary was built with."},
	"go_info_ext":                      {"gauge", "Always 1; the labels are the compiler, GOARCH, GOOS and GOROOT this binary was built with."},

	// The process: proc(5) on Linux, the platform's equivalents elsewhere.
	"process_cpu_seconds_system_total": {"counter", "CPU time this process spent in the kernel, in seconds."},
	"process_cpu_seconds_total":        {"counter", "CPU time this process spent, user and kernel, in seconds."},
	"process_cpu_seconds_user_total":   {"counter", "CPU time this process spent in user space, in seconds."},
	"process_major_pagefaults_total":   {"counter", "Page faults that needed a read from disk."},
	"process_minor_pagefaults_total":   {"counter", "Page faults served without a read from disk."},
	"process_num_threads":              {"gauge", "OS threads in this process."},
	"process_resident_memory_bytes":    {"gauge", "Resident set size of this process in bytes."},
	"process_start_time_seconds":       {"gauge", "When this process started, in seconds since the Unix epoch."},
	"process_virtual_memory_bytes":     {"gauge", "Virtual memory size of this process in bytes."},
	// The library writes these six as gauges; they only go up, so they
	// are counters, as their _total says.
	"process_io_read_bytes_total":            {"counter", "Bytes this process read with read(2) and similar calls, from disk or the page cache (rchar in /proc/self/io)."},
	"process_io_written_bytes_total":         {"counter", "Bytes this process wrote with write(2) and similar calls (wchar in /proc/self/io)."},
	"process_io_read_syscalls_total":         {"counter", "Read system calls this process made (syscr in /proc/self/io)."},
	"process_io_write_syscalls_total":        {"counter", "Write system calls this process made (syscw in /proc/self/io)."},
	"process_io_storage_read_bytes_total":    {"counter", "Bytes this process caused to be read from storage (read_bytes in /proc/self/io)."},
	"process_io_storage_written_bytes_total": {"counter", "Bytes this process caused to be written to storage (write_bytes in /proc/self/io)."},
	"process_max_fds":                        {"gauge", "The most file descriptors this process may open (RLIMIT_NOFILE)."},
	"process_open_fds":                       {"gauge", "File descriptors this process has open."},
	"process_virtual_memory_peak_bytes":      {"gauge", "Peak virtual memory size of this process in bytes (VmPeak)."},
	"process_resident_memory_peak_bytes":     {"gauge", "Peak resident set size of this process in bytes (VmHWM)."},
	"process_resident_memory_anon_bytes":     {"gauge", "Resident anonymous memory of this process in bytes (RssAnon)."},
	"process_resident_memory_file_bytes":     {"gauge", "Resident file-backed memory of this process in bytes (RssFile)."},
	"process_resident_memory_shared_bytes":   {"gauge", "Resident shared memory of this process in bytes (RssShmem)."},
	// Pressure stall information of the process' cgroup, counted from the
	// process' start.
	"process_pressure_cpu_waiting_seconds_total":    {"counter", "Time some tasks of this process' cgroup waited for a CPU (PSI cpu some), in seconds."},
	"process_pressure_cpu_stalled_seconds_total":    {"counter", "Time all tasks of this process' cgroup were stalled waiting for a CPU (PSI cpu full), in seconds."},
	"process_pressure_io_waiting_seconds_total":     {"counter", "Time some tasks of this process' cgroup waited for I/O (PSI io some), in seconds."},
	"process_pressure_io_stalled_seconds_total":     {"counter", "Time all tasks of this process' cgroup were stalled on I/O (PSI io full), in seconds."},
	"process_pressure_memory_waiting_seconds_total": {"counter", "Time some tasks of this process' cgroup waited for memory (PSI memory some), in seconds."},
	"process_pressure_memory_stalled_seconds_total": {"counter", "Time all tasks of this process' cgroup were stalled waiting for memory (PSI memory full), in seconds."},
	"process_cgroup_cpu_throttled_seconds_total":    {"counter", "Time this process' cgroup was throttled by its CPU quota since the process started, in seconds."},
}
