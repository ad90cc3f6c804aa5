package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/detour-dev/detour/regions"
)

// errSelfLoop is wrapped when a config routes calls to the instance's own
// listener.
var errSelfLoop = errors.New("config routes calls back to this instance")

// listening records the Router listener's address and checks the config
// in force against it (regions.Config.SelfReferences); every later
// document is checked in Apply. It returns an error naming each backend
// that is the instance itself.
func (l *liveConfig) listening(addr net.Addr) error {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return nil
	}
	l.self.Store(ta)
	return checkSelf(l.rt.Snapshot().Config, ta)
}

// checkSelf returns an error wrapping errSelfLoop when cfg has a kind:
// detour backend at self, the instance's own listener (nil: not known yet).
func checkSelf(cfg *regions.Config, self *net.TCPAddr) error {
	if self == nil {
		return nil
	}
	var local []net.IP
	if self.IP == nil || self.IP.IsUnspecified() {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					local = append(local, n.IP)
				}
			}
		}
	}
	host, _ := os.Hostname()
	if loops := cfg.SelfReferences(self, local, host); len(loops) > 0 {
		return fmt.Errorf("%w: %s", errSelfLoop, strings.Join(loops, "; "))
	}
	return nil
}
