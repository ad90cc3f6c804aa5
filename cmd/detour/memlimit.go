package main

import (
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryLimitEnv names the environment variable that holds the container's
// memory limit in bytes, as Kubernetes' downward API gives it
// (resourceFieldRef limits.memory); the Helm chart sets it.
const memoryLimitEnv = "DETOUR_MEMORY_LIMIT"

// memoryLimitPercent is the share of the container's limit given to the Go
// runtime as its soft limit (GOMEMLIMIT): the rest is for what the runtime
// does not count (the binary, thread stacks of the OS, fragmentation), so
// that the collector works harder before the kernel kills the pod.
const memoryLimitPercent = 90

// memoryLimit returns the soft memory limit to set from getenv: 90% of
// DETOUR_MEMORY_LIMIT, or 0 to leave the runtime alone (the variable unset,
// or GOMEMLIMIT set: an operator's explicit choice wins). A value that is
// not a positive number of bytes is an error.
func memoryLimit(getenv func(string) string) (int64, error) {
	v := strings.TrimSpace(getenv(memoryLimitEnv))
	if v == "" || getenv("GOMEMLIMIT") != "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s=%q: want the container's memory limit in bytes, a positive whole number", memoryLimitEnv, v)
	}
	return n / 100 * memoryLimitPercent, nil
}

// applyMemoryLimit sets the runtime's soft memory limit as memoryLimit
// says and returns it (0: left alone).
func applyMemoryLimit(getenv func(string) string) (int64, error) {
	n, err := memoryLimit(getenv)
	if err != nil || n == 0 {
		return 0, err
	}
	debug.SetMemoryLimit(n)
	return n, nil
}
