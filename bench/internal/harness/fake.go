package harness

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
)

// Fake is a cmd/fakellm child process.
type Fake struct {
	*Child
	// Name is the backend's name; HTTP and GRPC its listeners' host:port
	// (GRPC empty without one).
	Name, HTTP, GRPC string
	// CertFile holds the certificate of its HTTPS listener, for a
	// client's CA file; empty without Config.TLS.
	CertFile string

	ctl *http.Client // ctlClient, or one that trusts CertFile
}

// StartFake starts cmd/fakellm on loopback ports with cfg, serving HTTP and,
// if withGRPC, gRPC.
func StartFake(cfg fakellm.Config, withGRPC bool) (*Fake, error) {
	_, bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	st := cfg.Settings
	args := []string{"-http", "127.0.0.1:0",
		"-name", cfg.Name, "-region", cfg.Region,
		"-latency", st.Latency.String(), "-jitter", st.Jitter.String(),
		"-busy-rate", Ftoa(st.BusyRate), "-qps", Ftoa(st.QPS), "-burst", strconv.Itoa(st.Burst),
		"-capacity", Ftoa(st.Capacity), "-max-concurrency", strconv.Itoa(st.MaxConcurrency),
		"-hang-rate", Ftoa(st.HangRate), "-tokens-per-sec", Ftoa(st.TokensPerSec),
		"-garbage-rate", Ftoa(st.GarbageRate), "-cut-rate", Ftoa(st.CutRate)}
	if st.TTFT > 0 || st.TTFTTailRate > 0 {
		args = append(args, "-ttft", st.TTFT.String(), "-ttft-sigma", Ftoa(st.TTFTSigma),
			"-ttft-tail-rate", Ftoa(st.TTFTTailRate), "-ttft-tail", st.TTFTTail.String())
	}
	if st.BreakRate > 0 {
		args = append(args, "-break-rate", Ftoa(st.BreakRate), "-break-clean", Ftoa(st.BreakClean))
	}
	if st.PrefixCompletion {
		args = append(args, "-prefix-completion")
	}
	if st.AnswerTokens > 0 {
		args = append(args, "-answer-tokens", strconv.Itoa(st.AnswerTokens))
	}
	if withGRPC {
		args = append(args, "-grpc", "127.0.0.1:0")
	}
	// Only when set, so that an older fakellm without these flags still runs.
	if cfg.H2C {
		args = append(args, "-h2c")
	}
	if cfg.MaxStreams > 0 {
		args = append(args, "-max-streams", strconv.Itoa(cfg.MaxStreams))
	}
	f := &Fake{Name: cfg.Name}
	if cfg.TLS {
		dir, err := WorkDir()
		if err != nil {
			return nil, err
		}
		f.CertFile = filepath.Join(dir, "fakellm-"+cfg.Name+".crt")
		args = append(args, "-tls", "-tls-cert-out", f.CertFile)
	}
	var mu sync.Mutex
	ready := func(line string) bool {
		mu.Lock()
		defer mu.Unlock()
		if a, ok := strings.CutPrefix(line, "fakellm: http listening on "); ok {
			f.HTTP = a
		}
		if a, ok := strings.CutPrefix(line, "fakellm: grpc listening on "); ok {
			f.GRPC = a
		}
		return f.HTTP != "" && (!withGRPC || f.GRPC != "")
	}
	c, err := StartChild("fakellm-"+cfg.Name, bin, args, ready, 20*time.Second)
	if err != nil {
		return nil, err
	}
	f.Child = c
	f.ctl = ctlClient
	if f.CertFile != "" {
		pem, err := os.ReadFile(f.CertFile)
		if err != nil {
			c.Stop()
			return nil, err
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
		f.ctl = &http.Client{Timeout: ctlClient.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	}
	return f, nil
}

// Ftoa formats v as the shortest decimal that reads back the same.
func Ftoa(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

var ctlClient = &http.Client{Timeout: 5 * time.Second}

// Stats reads fakellm's GET /stats: the requests it answered, by outcome.
func (f *Fake) Stats() (fakellm.Stats, error) {
	var st fakellm.Stats
	resp, err := f.ctl.Get(f.url("/stats"))
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s /stats: %s", f.Name, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// ConnStats reads the http_conns of fakellm's GET /stats: its HTTP
// connections, and the most requests in flight on one.
func (f *Fake) ConnStats() (fakellm.ConnStats, error) {
	var st struct {
		Conns fakellm.ConnStats `json:"http_conns"`
	}
	resp, err := f.ctl.Get(f.url("/stats"))
	if err != nil {
		return st.Conns, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st.Conns, fmt.Errorf("%s /stats: %s", f.Name, resp.Status)
	}
	return st.Conns, json.NewDecoder(resp.Body).Decode(&st)
}

// Control POSTs a /control patch such as {"busy_rate": 0.5}.
func (f *Fake) Control(patch map[string]any) error {
	b, _ := json.Marshal(patch)
	resp, err := f.ctl.Post(f.url("/control"), "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s /control %s: %s %s", f.Name, b, resp.Status, body)
	}
	return nil
}

// OpenAIEndpoint is the base URL of f for an openai-kind backend.
func (f *Fake) OpenAIEndpoint() string { return f.url("/v1") }

// url is path on f's HTTP listener, https:// with TLS.
func (f *Fake) url(path string) string {
	if f.CertFile != "" {
		return "https://" + f.HTTP + path
	}
	return "http://" + f.HTTP + path
}

// Usage reads fakellm's GET /usage: the tokens it spent.
func (f *Fake) Usage() (fakellm.Usage, error) {
	var u fakellm.Usage
	resp, err := f.ctl.Get(f.url("/usage"))
	if err != nil {
		return u, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return u, fmt.Errorf("%s /usage: %s", f.Name, resp.Status)
	}
	return u, json.NewDecoder(resp.Body).Decode(&u)
}

// ResetStats zeroes fakellm's Stats, ConnStats and Usage (POST
// /stats/reset).
func (f *Fake) ResetStats() error {
	resp, err := f.ctl.Post(f.url("/stats/reset"), "application/json", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s /stats/reset: %s", f.Name, resp.Status)
	}
	return nil
}
