// Package flux is the host API of a Flux function written in Go (built by `flux build` for wasip1 with
// `-buildmode=c-shared`): it exports the Flux core ABI (`flux_alloc`, `flux_handle`) and calls the host through
// the `flux.call` import. Time (`time.Now`) and randomness (`crypto/rand`, `math/rand`) come through WASI, which
// Flux serves from its recorded clock and random source, so a replay gives the same values again.
//
//	func handle(req *flux.Request, ctx *flux.Ctx) (any, error) { ... }
//	func init() { flux.Handle(handle) }
//	func main() {}
package flux

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// Request is what the gateway hands a function (a job's payload is its Body).
type Request struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers"`
	Query   map[string]any    `json:"query"`
	Params  map[string]string `json:"params"`
	Body    json.RawMessage   `json:"body"`
	User    json.RawMessage   `json:"user"`
	Job     json.RawMessage   `json:"job"`
}

// Response is a whole answer; a handler may also return any other value, which becomes the body of a 200.
type Response struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    any               `json:"body"`
}

// Error is a host call that failed: its FX code and message (a refused query also lists its problems).
type Error struct {
	Code     string          `json:"code"`
	Message  string          `json:"message"`
	Problems json.RawMessage `json:"problems,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Handler answers one request.
type Handler func(req *Request, ctx *Ctx) (any, error)

// Ctx is the host API: the database, the queue, outbound HTTP and secrets; Log writes a log span.
type Ctx struct {
	DB      DB
	Queue   Queue
	Secrets Secrets
}

type DB struct{}
type Queue struct{}
type Secrets struct{}

var handler Handler

// Handle sets the function's handler; call it from an `init` function of package main.
func Handle(h Handler) { handler = h }

// Call makes one host call (`op` with `args`, see docs/functions.md) and returns its value as JSON.
func Call(op string, args any) (json.RawMessage, error) {
	message, err := json.Marshal(map[string]any{"op": op, "args": args})
	if err != nil {
		return nil, err
	}
	packed := fluxCall(unsafe.Pointer(unsafe.SliceData(message)), uint32(len(message)))
	runtime.KeepAlive(message) // the host reads it, and calls flux_alloc (which may collect) meanwhile
	reply := take(uint32(packed>>32), uint32(packed))
	var answer struct {
		OK    bool            `json:"ok"`
		Value json.RawMessage `json:"value"`
		Error *Error          `json:"error"`
	}
	if err := json.Unmarshal(reply, &answer); err != nil {
		return nil, fmt.Errorf("flux: the host's answer to %s is not JSON: %w", op, err)
	}
	if !answer.OK {
		if answer.Error == nil {
			answer.Error = &Error{Code: "FX900", Message: "the host call failed"}
		}
		return nil, answer.Error
	}
	return answer.Value, nil
}

// Query runs a query of the JSON query language (docs/query-language.md): `{rows, after, more}` for a select,
// `{count, rows?}` for a write.
func (DB) Query(query any) (json.RawMessage, error) { return Call("db.query", query) }

// SQL runs one raw statement with $1, $2, … bound to params (the service role only).
func (DB) SQL(sql string, params ...any) (json.RawMessage, error) {
	if params == nil {
		params = []any{}
	}
	return Call("db.sql", map[string]any{"sql": sql, "params": params})
}

// PushOptions are a queue push's options; zero values are left to Flux's defaults.
type PushOptions struct {
	DelayMs        int64  `json:"delay_ms,omitempty"`
	RunAt          string `json:"run_at,omitempty"`
	Priority       int    `json:"priority,omitempty"`
	Queue          string `json:"queue,omitempty"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	MaxAttempts    int    `json:"max_attempts,omitempty"`
}

// Push enqueues a job for `function`, in the request's transaction.
func (Queue) Push(function string, payload any, options *PushOptions) (json.RawMessage, error) {
	args := map[string]any{"function": function, "payload": payload}
	if options != nil {
		extra, _ := json.Marshal(options)
		_ = json.Unmarshal(extra, &args)
	}
	return Call("queue.push", args)
}

// Get reads a secret (recorded as `[secret:name]`).
func (Secrets) Get(name string) (string, error) {
	value, err := Call("secrets.get", map[string]any{"name": name})
	if err != nil {
		return "", err
	}
	var text string
	err = json.Unmarshal(value, &text)
	return text, err
}

// FetchOptions are an outbound request's method, headers, body and timeout.
type FetchOptions struct {
	Method    string            `json:"method,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	Body      string            `json:"body,omitempty"`
	TimeoutMs int64             `json:"timeout_ms,omitempty"`
}

// FetchResponse is what a fetch got back (Body, or BodyBase64 for bytes that are not text).
type FetchResponse struct {
	Status     int               `json:"status"`
	Headers    map[string]string `json:"headers"`
	Body       string            `json:"body"`
	BodyBase64 string            `json:"body_base64"`
}

// Fetch sends an outbound HTTP request (private addresses are refused unless allow-listed).
func Fetch(url string, options *FetchOptions) (*FetchResponse, error) {
	args := map[string]any{"url": url}
	if options != nil {
		extra, _ := json.Marshal(options)
		_ = json.Unmarshal(extra, &args)
	}
	value, err := Call("fetch", args)
	if err != nil {
		return nil, err
	}
	var response FetchResponse
	if err := json.Unmarshal(value, &response); err != nil {
		return nil, err
	}
	return &response, nil
}

// Log writes a log span at `info`, with optional fields.
func Log(message string, fields map[string]any) { LogAt("info", message, fields) }

// LogAt writes a log span at a level: debug, info, warn or error.
func LogAt(level, message string, fields map[string]any) {
	args := map[string]any{"message": message, "level": level}
	if fields != nil {
		args["fields"] = fields
	}
	_, _ = Call("log", args)
}

// -- the core ABI ----------------------------------------------------------------------------------------

//go:wasmimport flux call
func fluxCall(pointer unsafe.Pointer, length uint32) uint64

// Memory the host was given by flux_alloc, kept reachable until the SDK reads it: the instance serves one
// request, so nothing is ever freed.
var given = map[uint32][]byte{}

//go:wasmexport flux_alloc
func fluxAlloc(length uint32) uint32 {
	buffer := make([]byte, max(length, 1))
	pointer := uint32(uintptr(unsafe.Pointer(unsafe.SliceData(buffer))))
	given[pointer] = buffer
	return pointer
}

func take(pointer, length uint32) []byte {
	buffer, ok := given[pointer]
	if !ok || int(length) > len(buffer) {
		panic("flux: the host answered in memory it was not given")
	}
	delete(given, pointer)
	return buffer[:length]
}

// kept holds the result until the host has read it (the instance ends with the request).
var kept []byte

//go:wasmexport flux_handle
func fluxHandle(pointer, length uint32) uint64 {
	var request Request
	if err := json.Unmarshal(take(pointer, length), &request); err != nil {
		fail(fmt.Errorf("flux: the request is not JSON: %w", err))
	}
	if handler == nil {
		fail(fmt.Errorf("flux: no handler: call flux.Handle(handle) in an init function"))
	}
	result, err := handler(&request, &Ctx{})
	if err != nil {
		fail(err)
	}
	kept, err = json.Marshal(result)
	if err != nil {
		fail(fmt.Errorf("flux: the handler's result is not JSON: %w", err))
	}
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(kept))))<<32 | uint64(len(kept))
}

// fail ends the request with the error: its message goes to stderr (an error log span) and the run stops.
func fail(err error) {
	fmt.Fprintln(os.Stderr, err.Error())
	os.Exit(1)
}
