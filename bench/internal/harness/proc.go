package harness

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ProcSample is what /proc says about a process at one moment.
type ProcSample struct {
	CPU     time.Duration // user + system, all threads
	RSS     int64         // bytes
	HWM     int64         // peak RSS, bytes
	Threads int
}

// userHZ is the kernel's USER_HZ: 100 on every Linux architecture Go runs on
// that has /proc in clock ticks.
const userHZ = 100

// ReadProc reads /proc/PID/stat and /proc/PID/status.
func ReadProc(pid int) (ProcSample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcSample{}, err
	}
	status, serr := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	s, err := parseProc(stat, status) // the CPU time even without status
	return s, cmp.Or(err, serr)
}

// parseProc reads the CPU time from a /proc/PID/stat line and the memory
// and threads from a /proc/PID/status file.
func parseProc(stat, status []byte) (ProcSample, error) {
	var s ProcSample
	// The command name may hold spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return s, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.CPU = time.Duration(ut+st) * time.Second / userHZ
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmRSS":
			s.RSS = n << 10
		case "VmHWM":
			s.HWM = n << 10
		case "Threads":
			s.Threads = int(n)
		}
	}
	return s, nil
}

// Self reads this process's /proc sample (the load generator's).
func Self() ProcSample {
	s, _ := ReadProc(os.Getpid())
	return s
}

// CPUMark is a reading of the whole machine's busy CPU and of bench's own
// (this process and its live children).
type CPUMark struct {
	at         time.Time
	busy, ours time.Duration
}

// MarkCPU reads the machine's and bench's CPU now.
func MarkCPU() CPUMark {
	m := CPUMark{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		// cpu user nice system idle iowait irq softirq steal ...
		for i, v := range f {
			if i == 0 || i == 4 || i == 5 || i > 8 {
				continue
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			m.busy += time.Duration(n) * time.Second / userHZ
		}
	}
	m.ours += Self().CPU
	childrenMu.Lock()
	cs := slices.Clone(children)
	childrenMu.Unlock()
	for _, c := range cs {
		if c.Alive() {
			m.ours += c.Proc().CPU
		}
	}
	return m
}

// ForeignCPU is how many cores other processes used on average since m: a
// run during which this is well above zero shared the machine.
func (m CPUMark) ForeignCPU() float64 {
	n := MarkCPU()
	wall := n.at.Sub(m.at)
	if wall <= 0 {
		return 0
	}
	return max(0, float64((n.busy-m.busy)-(n.ours-m.ours))/float64(wall))
}

// Sockets counts the established TCP connections of process pid to port on
// loopback (the upstream connections of a detour child): the sockets among
// its open files, looked up in /proc/PID/net/tcp and tcp6.
func Sockets(pid, port int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	inodes := make(map[string]bool, len(fds))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if in, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(in, "]")] = true
		}
	}
	n := 0
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			return 0, err
		}
		n += countSockets(b, port, inodes)
	}
	return n, nil
}

// countSockets counts the lines of a /proc/net/tcp table in state
// ESTABLISHED (01), to remote port, whose inode is in inodes.
func countSockets(table []byte, port int, inodes map[string]bool) int {
	want := fmt.Sprintf(":%04X", port)
	n := 0
	for i, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if i == 0 || len(f) < 10 || f[3] != "01" || !strings.HasSuffix(f[2], want) || !inodes[f[9]] {
			continue
		}
		n++
	}
	return n
}
