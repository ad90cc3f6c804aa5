package harness

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Child is a process started by bench. Its stdout and stderr go to a log
// file (LogPath); each line is also offered to the OnLine callbacks. Its
// methods are safe for concurrent use.
type Child struct {
	name    string
	cmd     *exec.Cmd
	logPath string

	mu      sync.Mutex
	watch   []*lineWatch
	tail    []string
	done    chan struct{}
	exitErr error
	readers sync.WaitGroup
}

// children are every process bench started, for MarkCPU.
var (
	childrenMu sync.Mutex
	children   []*Child
)

// StartChild starts bin with args (env added to bench's environment). ready
// is called on every output line until it returns true; StartChild waits
// for that, for the process to exit (an error with the end of its output)
// or for timeout (the process is killed).
func StartChild(name, bin string, args []string, ready func(line string) bool, timeout time.Duration, env ...string) (*Child, error) {
	dir, err := WorkDir()
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp(dir, name+"-*.log")
	if err != nil {
		return nil, err
	}
	c := &Child{name: name, logPath: logf.Name(), done: make(chan struct{})}
	childrenMu.Lock()
	children = append(children, c)
	childrenMu.Unlock()
	c.cmd = exec.Command(bin, args...)
	if len(env) > 0 {
		c.cmd.Env = append(os.Environ(), env...)
	}
	// The child dies with bench, so an interrupted run leaves no load behind.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	readyc := make(chan struct{})
	var readyOnce sync.Once
	c.OnLine(func(line string) bool {
		if ready(line) {
			readyOnce.Do(func() { close(readyc) })
			return true
		}
		return false
	})
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	var logMu sync.Mutex
	read := func(r io.Reader) {
		defer c.readers.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			fmt.Fprintln(logf, line)
			logMu.Unlock()
			c.offer(line)
		}
	}
	c.readers.Add(2)
	go read(stdout)
	go read(stderr)
	go func() {
		c.readers.Wait()
		err := c.cmd.Wait()
		logf.Close()
		c.mu.Lock()
		c.exitErr = err
		c.mu.Unlock()
		close(c.done)
	}()
	select {
	case <-readyc:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before it was ready: %v\n%s", name, c.Err(), c.TailText())
	case <-time.After(timeout):
		c.Kill()
		return nil, fmt.Errorf("%s not ready after %v\n%s", name, timeout, c.TailText())
	}
}

func (c *Child) offer(line string) {
	c.mu.Lock()
	c.tail = append(c.tail, line)
	if len(c.tail) > 20 {
		c.tail = c.tail[len(c.tail)-20:]
	}
	ws := slices.Clone(c.watch)
	c.mu.Unlock()
	for _, w := range ws {
		if !w.done.Load() && w.f(line) {
			w.done.Store(true)
		}
	}
}

// lineWatch is a line callback; done once it returned true.
type lineWatch struct {
	f    func(line string) bool
	done atomic.Bool
}

// OnLine calls f for every later output line until f returns true. f may
// be called from two goroutines at once (stdout and stderr).
func (c *Child) OnLine(f func(line string) bool) {
	c.mu.Lock()
	c.watch = append(c.watch, &lineWatch{f: f})
	c.mu.Unlock()
}

// Pid is the process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// LogPath is the file holding the child's output.
func (c *Child) LogPath() string { return c.logPath }

// Err is how the process exited: nil while it runs or after a clean exit.
func (c *Child) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exitErr
}

// TailText is the log's path and the last lines of output, for errors.
func (c *Child) TailText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("(log %s)\n  %s", c.logPath, strings.Join(c.tail, "\n  "))
}

// Alive reports whether the process has not exited.
func (c *Child) Alive() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// Signal sends sig and returns at once.
func (c *Child) Signal(sig os.Signal) error { return c.cmd.Process.Signal(sig) }

// Wait waits up to d for the process to exit and reports whether it did.
func (c *Child) Wait(d time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop sends SIGTERM, waits up to 10 s, then kills.
func (c *Child) Stop() {
	if !c.Alive() {
		return
	}
	c.Signal(syscall.SIGTERM)
	if !c.Wait(10 * time.Second) {
		c.Kill()
	}
}

// Kill kills the process and waits up to 5 s for it.
func (c *Child) Kill() {
	c.cmd.Process.Kill()
	c.Wait(5 * time.Second)
}

// Proc reads the process's CPU and memory from /proc (zero once it exited).
func (c *Child) Proc() ProcSample {
	s, _ := ReadProc(c.Pid())
	return s
}

// StartSelf runs this bench binary with args (a helper command and its
// flags) as a child and waits for the output line that starts with
// readyPrefix; the address is the rest of that line without readySuffix.
func StartSelf(args []string, readyPrefix, readySuffix string, env ...string) (*Child, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	var addr string
	c, err := StartChild(args[0], self, args, func(line string) bool {
		if a, ok := strings.CutPrefix(line, readyPrefix); ok {
			addr = strings.TrimSuffix(a, readySuffix)
			return true
		}
		return false
	}, 10*time.Second, env...)
	if err != nil {
		return nil, "", err
	}
	return c, addr, nil
}
