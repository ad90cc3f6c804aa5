package load

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DirectHTTP returns a Call to an OpenAI-compatible API at addr (host:port)
// made as a plain Go client would: one keep-alive http.Client, JSON encode,
// POST /v1/chat/completions, JSON decode. An HTTP error status becomes the
// gRPC code detour would use for it (HTTPCode).
func DirectHTTP(addr, prompt string, timeout time.Duration) Call {
	url := "http://" + addr + "/v1/chat/completions"
	tr := &http.Transport{MaxIdleConnsPerHost: 64, ForceAttemptHTTP2: true}
	client := &http.Client{Transport: tr}
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	type chatReq struct {
		Model    string `json:"model"`
		Messages []msg  `json:"messages"`
	}
	type chatResp struct {
		ID      string `json:"id"`
		Choices []struct {
			Message      msg    `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
	}
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		body, err := json.Marshal(chatReq{Model: "deepseek-chat", Messages: []msg{{Role: "user", Content: prompt}}})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		if resp.StatusCode != http.StatusOK {
			return status.Error(HTTPCode(resp.StatusCode), resp.Status)
		}
		var cr chatResp
		if err := json.Unmarshal(b, &cr); err != nil || len(cr.Choices) == 0 {
			return status.Errorf(codes.Internal, "bad answer: %v", err)
		}
		return nil
	}
}

// HTTPCode maps an HTTP status to the gRPC code detour would use.
func HTTPCode(s int) codes.Code {
	switch s {
	case 429:
		return codes.ResourceExhausted
	case 503, 529, 502, 504:
		return codes.Unavailable
	case 400, 422:
		return codes.InvalidArgument
	}
	return codes.Unknown
}
