//go:build race

package capacity

// raceEnabled: the race detector slows the simulations about a hundredfold,
// so they run short under it.
const raceEnabled = true
