// POST /notes {"text": "..."}: stores a note and answers it. Every call is recorded: `flux trace <request id>`.
package main

import (
	"encoding/json"

	"flux.local/flux"
)

func handle(req *flux.Request, ctx *flux.Ctx) (any, error) {
	var body struct {
		Text string `json:"text"`
	}
	_ = json.Unmarshal(req.Body, &body)
	if body.Text == "" {
		return flux.Response{Status: 400, Body: map[string]string{"error": `send {"text": "..."}`}}, nil
	}
	note, err := ctx.DB.Query(map[string]any{
		"insert": "notes", "values": map[string]any{"body": body.Text}, "returning": []string{"id", "body"},
	})
	if err != nil {
		return nil, err
	}
	var inserted struct {
		Rows []json.RawMessage `json:"rows"`
	}
	if err := json.Unmarshal(note, &inserted); err != nil {
		return nil, err
	}
	return flux.Response{Status: 201, Body: inserted.Rows[0]}, nil
}

func init() { flux.Handle(handle) }

func main() {}
