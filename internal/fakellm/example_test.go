package fakellm_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/detour-dev/detour/internal/fakellm"
)

func ExampleServer() {
	srv := fakellm.New(fakellm.Config{Region: "eu-west"})
	if err := srv.Start("127.0.0.1:0", ""); err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Post("http://"+srv.HTTPAddr()+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"deepseek-chat","messages":[{"role":"user","content":"Is the provider busy?"}]}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	var answer struct {
		Choices []struct {
			Message struct{ Content string }
		}
		Usage struct {
			TotalTokens int `json:"total_tokens"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(resp.StatusCode, answer.Choices[0].Message.Content, answer.Usage.TotalTokens)
	fmt.Println("ok:", srv.Stats().OK)
	// Output:
	// 200 [eu-west] echo: Is the provider busy? (ref 086d975a) 21
	// ok: 1
}
