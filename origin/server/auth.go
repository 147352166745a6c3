package server

import (
	"crypto/subtle"
	"net/http"
	"strings"
)

// bearer wraps h so it runs only for requests that carry "Authorization: Bearer <secret>". An
// empty secret refuses everything: an unset admin token never means "open".
func bearer(secret, realm string, h http.HandlerFunc) http.HandlerFunc {
	return bearerAny([]string{secret}, realm, h)
}

// bearerAny is bearer with several accepted secrets (the admin token or a read-only key).
func bearerAny(secrets []string, realm string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearerToken(r.Header.Get("Authorization"))
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`"`)
			httpError(w, http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <"+realm+">")
			return
		}
		for _, secret := range secrets {
			if secret != "" && subtle.ConstantTimeCompare([]byte(got), []byte(secret)) == 1 {
				h(w, r)
				return
			}
		}
		httpError(w, http.StatusForbidden, "wrong "+realm)
	}
}

// bearerToken returns the token of an "Authorization: Bearer <token>" header. The scheme name
// is case-insensitive (RFC 9110, section 11.1): "bearer x" and "BEARER x" are accepted too.
func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimLeft(token, " ")
	return token, token != ""
}
