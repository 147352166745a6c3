package device

import "testing"

// userAgents are real User-Agent strings as browsers, apps and crawlers send them.
var userAgents = []struct {
	ua   string
	want Class
}{
	// Desktop browsers.
	{"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Desktop},
	{"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51", Desktop},
	{"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", Desktop},
	{"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15", Desktop},
	{"Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0", Desktop},
	{"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Desktop},
	{"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0", Desktop},
	{"Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Desktop},
	{"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0", Desktop},
	{"Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko", Desktop},
	{"Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.2; Trident/6.0; Touch; Tablet PC 2.0)", Desktop},
	// iPadOS Safari asks for desktop sites with the macOS User-Agent: indistinguishable.
	{"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15", Desktop},

	// Phones.
	{"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1", Mobile},
	{"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1", Mobile},
	{"Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/460.0.0.38.108;FBBV/580000000;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/16.6;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]", Mobile},
	{"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36", Mobile},
	{"Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36", Mobile},
	{"Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", Mobile},
	{"Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/96.0.4664.45 Mobile Safari/537.36", Mobile},
	{"Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 Instagram 300.0.0.29.110 Android", Mobile},
	{"Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.15063", Mobile},
	{"Opera/9.80 (Android; Opera Mini/7.5.33361/31.1448; U; en) Presto/2.8.119 Version/11.1010", Mobile},
	{"Mozilla/5.0 (BlackBerry; U; BlackBerry 9900; en) AppleWebKit/534.11+ (KHTML, like Gecko) Version/7.1.0.346 Mobile Safari/534.11+", Mobile},
	{"Mozilla/5.0 (Mobile; LYF/F300B/LYF-F300B-001-01-15-130718-i;Android; rv:48.0) Gecko/48.0 Firefox/48.0 KAIOS/2.5", Mobile},
	{"Mozilla/5.0 (iPod touch; CPU iPhone OS 15_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.6.1 Mobile/15E148 Safari/604.1", Mobile},

	// Tablets.
	{"Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", Tablet},
	{"Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1", Tablet},
	{"Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", Tablet},
	{"Mozilla/5.0 (Android 13; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0", Tablet},
	{"Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/123.3.1 like Chrome/123.0.6312.118 Safari/537.36", Tablet},
	{"Mozilla/5.0 (Linux; U; en-us; KFAPWI Build/JDQ39) AppleWebKit/535.19 (KHTML, like Gecko) Silk/3.13 Safari/535.19 Silk-Accelerated=true", Tablet},
	{"Mozilla/5.0 (Linux; Android 4.4.2; Nexus 7 Build/KOT49H) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/34.0.1847.114 Safari/537.36", Tablet},

	// Crawlers, previewers, monitors and tools.
	{"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Bot},
	{"Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.91 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Bot},
	{"Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36", Bot},
	{"Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", Bot},
	{"Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)", Bot},
	{"DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)", Bot},
	{"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)", Bot},
	{"facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", Bot},
	{"Twitterbot/1.0", Bot},
	{"Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", Bot},
	{"Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", Bot},
	{"Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)", Bot},
	{"Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", Bot},
	{"Mozilla/5.0 (Linux; Android 7.0; Moto G (4)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.9 Mobile Safari/537.36 Chrome-Lighthouse", Bot},
	{"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.6367.60 Safari/537.36", Bot},
	{"Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", Bot},
	{"WhatsApp/2.23.20.0", Desktop}, // link previews from WhatsApp carry no bot marker; a known gap
	{"curl/8.5.0", Bot},
	{"Wget/1.21.4", Bot},
	{"python-requests/2.31.0", Bot},
	{"Go-http-client/1.1", Bot},
	{"okhttp/4.12.0", Bot},
	{"PostmanRuntime/7.37.3", Bot},
	{"", Bot},
}

func TestClassify(t *testing.T) {
	for _, tc := range userAgents {
		if got := Classify(tc.ua); got != tc.want {
			t.Errorf("Classify(%q) = %v, want %v", tc.ua, got, tc.want)
		}
		if got := ClassifyBytes([]byte(tc.ua)); got != tc.want {
			t.Errorf("ClassifyBytes(%q) = %v, want %v", tc.ua, got, tc.want)
		}
	}
}

func TestClassNames(t *testing.T) {
	for c, want := range map[Class]string{Desktop: "desktop", Mobile: "mobile", Tablet: "tablet", Bot: "bot", Class(200): "desktop"} {
		if c.String() != want {
			t.Errorf("Class(%d).String() = %q, want %q", c, c.String(), want)
		}
	}
}

func TestClassifyDoesNotAllocate(t *testing.T) {
	ua := []byte(userAgents[0].ua)
	if allocs := testing.AllocsPerRun(100, func() {
		for _, tc := range userAgents {
			Classify(tc.ua)
		}
		ClassifyBytes(ua)
	}); allocs != 0 {
		t.Errorf("Classify allocates %v times per call, want 0", allocs)
	}
}

func BenchmarkClassify(b *testing.B) {
	uas := [][]byte{[]byte(userAgents[0].ua), []byte(userAgents[12].ua), []byte(userAgents[25].ua), []byte(userAgents[32].ua)}
	for _, ua := range uas {
		b.Run(ClassifyBytes(ua).String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ClassifyBytes(ua)
			}
		})
	}
}

func FuzzClassify(f *testing.F) {
	for _, tc := range userAgents {
		f.Add(tc.ua)
	}
	f.Fuzz(func(t *testing.T, ua string) {
		c := Classify(ua)
		if c > Bot || ClassifyBytes([]byte(ua)) != c {
			t.Fatalf("Classify(%q) = %d, ClassifyBytes disagrees or out of range", ua, c)
		}
	})
}
