package proxy

import (
	"bytes"

	"github.com/valyala/fasthttp"
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
