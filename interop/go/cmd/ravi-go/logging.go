package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// newLineHandler logs to out, each line starting with prefix ("ravi-go ID").
func newLineHandler(out io.Writer, prefix string, level slog.Level) *lineHandler {
	return &lineHandler{out: out, prefix: prefix, level: level, mu: &sync.Mutex{}}
}

// lineHandler writes a node's log lines as the Python and Node nodes do:
//
//	ravi-go NODE_ID LEVEL: message key=value ...
//
// with the level in lower case (debug, info, warn, error).
type lineHandler struct {
	out    io.Writer
	prefix string
	level  slog.Level
	attrs  []slog.Attr
	mu     *sync.Mutex
}

func (h *lineHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.level
}

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %s", h.prefix, strings.ToLower(r.Level.String()), r.Message)
	write := func(a slog.Attr) bool {
		// The node's id is in the prefix already.
		if !a.Equal(slog.Attr{}) && a.Key != "node" {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value.Resolve())
		}
		return true
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(write)
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.out, b.String())
	return err
}

func (h *lineHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), attrs...)
	return &c
}

// WithGroup is not used by the node: group names are dropped.
func (h *lineHandler) WithGroup(string) slog.Handler { return h }
