// Package device sorts a request into a device class by its User-Agent: "mobile", "tablet",
// "desktop" or "bot", the value rules see as request.device.
//
// It runs on every request, so it is one pass over the User-Agent comparing, at each byte,
// the few tokens that start with it: no regular expressions, no copy, no allocation. It is a
// heuristic in the tradition of server-side "mobile detect" checks, and knowingly wrong in a
// few places:
//   - iPadOS Safari sends the desktop macOS User-Agent by default, so those iPads are "desktop".
//   - Android devices whose browser does not say "Mobile" are "tablet" (Google's documented
//     convention), which also catches some TVs and other big screens.
//   - Anything that announces itself as a crawler, link previewer, monitor or HTTP library is
//     a "bot"; so is an empty User-Agent (browsers always send one). A bot that pretends to be
//     a browser is not recognised; that takes behaviour, not a header.
package device

import "unsafe"

// Class is a device class.
type Class uint8

// The device classes. Desktop is the zero value: what a request is when nothing says otherwise.
const (
	Desktop Class = iota
	Mobile
	Tablet
	Bot
)

var classNames = [...]string{Desktop: "desktop", Mobile: "mobile", Tablet: "tablet", Bot: "bot"}

// String returns the class's name as rules see it: "desktop", "mobile", "tablet" or "bot".
func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "desktop"
}

// Tokens, lower-case. A User-Agent containing any bot token is a bot; otherwise any tablet
// token makes it a tablet, then any mobile token a phone, then "android" alone a tablet.
var (
	// botTokens: crawlers ("Googlebot/2.1", "Slackbot-LinkExpanding", "PetalBot;"), a contact
	// URL as crawlers give ("+http://"), previewers, monitors, headless browsers and HTTP
	// libraries. "bot" alone is not a token: it would make phones such as the CUBOT X19 bots.
	botTokens = []string{"bot/", "bot;", "bot)", "bot-", "robot", "spider", "crawl", "slurp", "+http",
		"facebookexternalhit", "mediapartners-google", "inspectiontool", "lighthouse", "headless",
		"phantomjs", "pingdom", "uptime", "preview", "feedfetcher", "ia_archiver", "archive.org",
		"curl/", "wget/", "python-", "python/", "go-http-client", "java/", "okhttp", "libwww", "httpclient",
		"axios/", "node-fetch", "undici", "scrapy", "postmanruntime", "insomnia", "guzzlehttp",
		"ruby", "perl", "http_request", "wordpress/"}
	// tabletTokens: devices that are tablets whatever else their User-Agent says (an iPad's
	// says "Mobile/15E148").
	tabletTokens = []string{"ipad", "tablet;", "kindle", "silk/", "playbook", "nexus 7", "nexus 10"}
	mobileTokens = []string{"mobi", "iphone", "ipod", "windows phone", "opera mini", "blackberry",
		"bb10", "webos", "kaios", "symbian", "nokia", "minimo", "fennec", "palm", "j2me", "midp"}
	// An Android device that does not say Mobile is a tablet (Google's convention).
	androidTokens = []string{"android"}

	// byFirst lists every token by its first byte, so that one pass over the User-Agent
	// checks all of them: at each position only the few tokens starting with that byte are
	// compared. Built once at start-up and never modified.
	byFirst = buildIndex()
	// bigrams[c] has bit c2 set when some token starts with the bytes c, c2.
	bigrams = buildBigrams()
)

func buildBigrams() *[256][4]uint64 {
	var b [256][4]uint64
	for _, l := range [][]string{botTokens, tabletTokens, mobileTokens, androidTokens} {
		for _, t := range l {
			b[t[0]][t[1]>>6] |= 1 << (t[1] & 63)
		}
	}
	return &b
}

type found uint8

const (
	foundBot found = 1 << iota
	foundTablet
	foundMobile
	foundAndroid
)

type token struct {
	s    string
	kind found
}

func buildIndex() *[256][]token {
	var idx [256][]token
	for _, l := range []struct {
		tokens []string
		kind   found
	}{{botTokens, foundBot}, {tabletTokens, foundTablet}, {mobileTokens, foundMobile}, {androidTokens, foundAndroid}} {
		for _, t := range l.tokens {
			idx[t[0]] = append(idx[t[0]], token{t, l.kind})
		}
	}
	return &idx
}

// Classify returns the device class of a User-Agent header value. It does not allocate.
func Classify(ua string) Class {
	if len(ua) == 0 {
		return Bot
	}
	var f found
	for i := 0; i < len(ua); i++ {
		c := ua[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if i+1 >= len(ua) {
			break // every token is at least two bytes long
		}
		c2 := lower(ua[i+1])
		if bigrams[c][c2>>6]&(1<<(c2&63)) == 0 {
			continue // no token starts with these two bytes: the common case
		}
		for _, t := range byFirst[c] {
			if f&t.kind == 0 && hasPrefixFold(ua[i:], t.s) {
				if t.kind == foundBot {
					return Bot
				}
				f |= t.kind
			}
		}
	}
	switch {
	case f&foundTablet != 0:
		return Tablet
	case f&foundMobile != 0:
		return Mobile
	case f&foundAndroid != 0:
		return Tablet
	}
	return Desktop
}

// ClassifyBytes is Classify for a header value held as bytes (as fasthttp hands it out). ua
// is only read during the call.
func ClassifyBytes(ua []byte) Class {
	return Classify(unsafe.String(unsafe.SliceData(ua), len(ua)))
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// hasPrefixFold reports whether b starts with the lower-case token t, ignoring ASCII case.
func hasPrefixFold(b, t string) bool {
	if len(b) < len(t) {
		return false
	}
	for j := 1; j < len(t); j++ { // the first byte was matched through byFirst
		if lower(b[j]) != t[j] {
			return false
		}
	}
	return true
}
