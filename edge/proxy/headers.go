package proxy

import (
	"bytes"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/segedge/segedge/core/ops"
)

// hopByHop are the headers that describe one connection, not the message (RFC 9110 §7.6.1),
// and so never cross the proxy in either direction.
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"TE", "Trailer", "Transfer-Encoding", "Upgrade",
}

// connectionTokens returns the header names listed in a Connection header ("close" and
// "keep-alive" are options, not names, but deleting headers by those names is harmless).
func connectionTokens(v []byte) [][]byte {
	var out [][]byte
	for _, t := range bytes.Split(v, []byte{','}) {
		if t = bytes.TrimSpace(t); len(t) > 0 {
			out = append(out, t)
		}
	}
	return out
}

func stripRequestHopByHop(h *fasthttp.RequestHeader) {
	for _, v := range h.PeekAll("Connection") {
		for _, name := range connectionTokens(v) {
			h.DelBytes(name)
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

func stripHopByHop(h *fasthttp.ResponseHeader) {
	for _, v := range h.PeekAll("Connection") {
		for _, name := range connectionTokens(v) {
			h.DelBytes(name)
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// RequestID names ctx's request in log lines: the caller's X-Request-Id when it sent a valid one
// (core/ops.ValidRequestID), otherwise "edge-" and the server's own number for the request. It is
// computed only for a log line, never on the way of a request that logs nothing.
func RequestID(ctx *fasthttp.RequestCtx) string {
	if id := string(ctx.Request.Header.Peek(ops.RequestIDHeader)); ops.ValidRequestID(id) {
		return id
	}
	return "edge-" + strconv.FormatUint(ctx.ID(), 16)
}
