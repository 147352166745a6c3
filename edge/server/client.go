package server

import (
	_ "embed"

	"github.com/valyala/fasthttp"
)

// clientJS is the browser client, served at /segedge.js (see edge/server/client/segedge.js).
//
//go:embed client/segedge.js
var clientJS []byte

func (e *edge) serveClient(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/javascript; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "public, max-age=300")
	ctx.SetBody(clientJS)
}
