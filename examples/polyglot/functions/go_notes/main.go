// A Flux function in Go (wasip1, built by `flux build go_notes`): records a note, pushes a job, fetches the URL
// given in the request, and reads the clock and random numbers through WASI (which Flux serves and records).
package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"flux.local/flux"
)

type body struct {
	Text string `json:"text"`
	URL  string `json:"url"`
}

func handle(req *flux.Request, ctx *flux.Ctx) (any, error) {
	var given body
	if len(req.Body) > 0 {
		if err := json.Unmarshal(req.Body, &given); err != nil {
			return nil, err
		}
	}
	fmt.Printf("go_notes at %d\n", time.Now().Unix())
	noise := rand.IntN(256)
	var fetched any
	if given.URL != "" {
		response, err := flux.Fetch(given.URL, nil)
		if err != nil {
			return nil, err
		}
		fetched = response
	}
	job, err := ctx.Queue.Push("go_notes", map[string]any{"from": "go"}, nil)
	if err != nil {
		return nil, err
	}
	note, err := ctx.DB.Query(map[string]any{
		"insert": "notes", "values": map[string]any{"body": "written by go"}, "returning": []string{"id", "body"},
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"note": note, "job": job, "fetched": fetched, "noise": noise}, nil
}

func init() { flux.Handle(handle) }

func main() {}
