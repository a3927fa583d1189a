// The replay corpus in Go (wasip1): the clock and randomness through WASI, a log line, a secret, a fetch, a
// read, a write and a push through Flux's Go package; `do` makes it fail or spin.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"flux.local/flux"
)

type body struct {
	Text string `json:"text"`
	URL  string `json:"url"`
	Do   string `json:"do"`
}

func handle(req *flux.Request, ctx *flux.Ctx) (any, error) {
	var given body
	if err := json.Unmarshal(req.Body, &given); err != nil {
		return nil, err
	}
	started := time.Now()
	noise := rand.Float64()
	flux.Log(fmt.Sprintf("go at %d", started.UnixMicro()), nil)
	secret, err := ctx.Secrets.Get("token")
	if err != nil {
		return nil, err
	}
	fetched, err := flux.Fetch(given.URL+"/go", &flux.FetchOptions{Headers: map[string]string{"x-token": secret}})
	if err != nil {
		return nil, err
	}
	event, err := ctx.DB.Query(map[string]any{
		"insert": "events", "values": map[string]any{"body": fmt.Sprintf("%s %.6f", given.Text, noise)},
		"returning": []string{"id", "at", "uid"},
	})
	if err != nil {
		return nil, err
	}
	read, err := ctx.DB.Query(map[string]any{"select": "events", "order": []any{map[string]any{"col": "id"}}})
	if err != nil {
		return nil, err
	}
	job, err := ctx.Queue.Push("after", map[string]any{"from": "go"}, &flux.PushOptions{Priority: 2})
	if err != nil {
		return nil, err
	}
	switch given.Do {
	case "throw!":
		return nil, errors.New("refused")
	case "timeout~":
		for spin := 0; ; spin++ {
		}
	}
	took := time.Since(started)
	return map[string]any{"started": started.UnixMicro(), "noise": noise, "fetched": fetched, "event": event,
		"read": read, "job": job, "took": took.Microseconds(), "secret": len(secret)}, nil
}

func init() { flux.Handle(handle) }

func main() {}
