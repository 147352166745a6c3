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
)

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
func Classify(ua string) Class { return classify(ua) }

// ClassifyBytes is Classify for a header value held as bytes (as fasthttp hands it out).
func ClassifyBytes(ua []byte) Class { return classify(ua) }

func classify[T string | []byte](ua T) Class {
	if len(ua) == 0 {
		return Bot
	}
	var f found
	for i := 0; i < len(ua); i++ {
		for _, t := range byFirst[lower(ua[i])] {
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

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// hasPrefixFold reports whether b starts with the lower-case token t, ignoring ASCII case.
func hasPrefixFold[T string | []byte](b T, t string) bool {
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
