package ops

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sync/atomic"
)

// UserKey is the log attribute key for a user, the same in every record of origin and edge.
const UserKey = "user"

// userLogging says how user ids appear in logs: hashed with a key (the default) or raw.
type userLogging struct {
	raw bool
	key []byte
}

var userLog atomic.Pointer[userLogging]

func init() {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic("ops: no randomness for the user log key: " + err.Error())
	}
	userLog.Store(&userLogging{key: key})
}

// SetUserLogging configures UserAttr for the process. With raw false, a user id is logged as a
// keyed hash: key (when not empty) makes the hashes of origin and edge agree, so one user's
// records can be followed across processes without the id itself in the logs; an empty key keeps
// the random per-process key. With raw true, ids are logged as they are (debugging only:
// profiles are personal data). Main calls it from SEGEDGE_LOG_RAW_USER_IDS and
// SEGEDGE_LOG_USER_KEY.
func SetUserLogging(raw bool, key string) {
	cur := userLog.Load()
	next := &userLogging{raw: raw, key: cur.key}
	if key != "" {
		next.key = []byte(key)
	}
	userLog.Store(next)
}

// UserAttr is the log attribute for a user id: user=<16 hex digits of HMAC-SHA256(key, id)>, or
// user=<id> when raw ids are allowed. Use it for every log record that names a user.
func UserAttr(id string) slog.Attr {
	return slog.String(UserKey, UserRef(id))
}

// UserRef is how a user id appears in logs (see UserAttr).
func UserRef(id string) string {
	l := userLog.Load()
	if l.raw {
		return id
	}
	m := hmac.New(sha256.New, l.key)
	m.Write([]byte(id))
	var sum [sha256.Size]byte
	return hex.EncodeToString(m.Sum(sum[:0])[:8])
}
