package server

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-dev/detour/auth"
)

// npmOpenAI is the official openai npm package the smoke test runs; 6.x is
// the last line that supports Node 20.
const npmOpenAI = "openai@6.30.1"

// nodeScript calls the HTTP face at $BASE with the npm package, unary and
// streamed, and prints what it got as JSON.
const nodeScript = `
const OpenAI = require('openai');
(async () => {
  const c = new OpenAI({ baseURL: process.env.BASE, apiKey: 'unused', maxRetries: 0 });
  const r = await c.chat.completions.create({ model: 'deepseek-chat', messages: [{ role: 'user', content: 'hello from node' }] });
  const s = await c.chat.completions.create({ model: 'deepseek-chat', stream: true, messages: [{ role: 'user', content: 'streamed to node' }] });
  let text = '';
  for await (const ch of s) text += (ch.choices[0] && ch.choices[0].delta.content) || '';
  console.log(JSON.stringify({ unary: r.choices[0].message.content, stream: text, source: r.detour && r.detour.source }));
})().catch((e) => { console.error(String(e)); process.exit(1); });
`

// TestHTTPNodeSDKSmoke runs the official openai npm package against the
// HTTP face when Node is installed. The package is installed once into the
// user's cache directory (DETOUR_NPM_DIR overrides it); without Node, or
// when npm cannot fetch it, the test skips and says why.
func TestHTTPNodeSDKSmoke(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the openai npm smoke test needs it (the Go SDK tests cover the face)")
	}
	dir := os.Getenv("DETOUR_NPM_DIR")
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			t.Skipf("no cache directory for the npm package: %v", err)
		}
		dir = filepath.Join(cache, "detour-test", strings.ReplaceAll(npmOpenAI, "@", "-"))
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json")); err != nil {
		npm, err := exec.LookPath("npm")
		if err != nil {
			t.Skip("node is installed but npm is not: cannot install " + npmOpenAI)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--prefix", dir, npmOpenAI).CombinedOutput()
		if err != nil {
			t.Skipf("npm install %s failed, skipping the smoke test: %v\n%s", npmOpenAI, err, out)
		}
	}
	fx := startHTTPFixture(t, "", auth.ModeOff, HTTPOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "-e", nodeScript)
	cmd.Env = append(os.Environ(), "BASE="+fx.base, "NODE_PATH="+filepath.Join(dir, "node_modules"))
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("node: %v\n%s%s", err, out, stderr)
	}
	var got struct{ Unary, Stream, Source string }
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node printed %q: %v", out, err)
	}
	if !strings.Contains(got.Unary, "hello from node") || !strings.Contains(got.Stream, "streamed to node") || got.Source != "live" {
		t.Errorf("node got %+v", got)
	}
}
