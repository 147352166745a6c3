package redis

import (
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

func isCluster(c goredis.UniversalClient) bool {
	_, ok := c.(*goredis.ClusterClient)
	return ok
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		url     string
		cluster bool
		addrs   []string
		user    string
		pass    string
		db      int
		err     string // part of the error; "" for none
	}{
		{url: "redis://127.0.0.1:6379/2", addrs: []string{"127.0.0.1:6379"}, db: 2},
		{url: "redis://u:pw@h:1", addrs: []string{"h:1"}, user: "u", pass: "pw"},
		{url: "redis+cluster://h1:7000,h2:7001,h3:7002", cluster: true, addrs: []string{"h1:7000", "h2:7001", "h3:7002"}},
		{url: "redis+cluster://h1:7000", cluster: true, addrs: []string{"h1:7000"}},
		{url: "redis+cluster://u:p%40ss@h1:7000,h2:7001/0?max_redirects=5", cluster: true, addrs: []string{"h1:7000", "h2:7001"}, user: "u", pass: "p@ss"},
		{url: "rediss+cluster://h1:7000,h2:7001", cluster: true, addrs: []string{"h1:7000", "h2:7001"}},
		// Schemes are case-insensitive, as url.Parse and config.CheckURL (which vets REDIS_URL) take them.
		{url: "REDIS+Cluster://h1:7000,h2:7001", cluster: true, addrs: []string{"h1:7000", "h2:7001"}},
		{url: "Rediss+CLUSTER://h1:7000", cluster: true, addrs: []string{"h1:7000"}},
		{url: "REDIS://h:1/3", addrs: []string{"h:1"}, db: 3},
		{url: "redis+cluster://h1:7000,h2:7001/3", err: "database 0 only"},
		{url: "redis+cluster://h1:7000,,h2:7001", err: "empty node address"},
		{url: "redis+cluster://u:secret@h1:7000,h2:7001?bogus=1", err: "u:xxxxx@h1"},
		{url: "http://h:1", err: "invalid URL scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			o, err := ParseURL(tt.url)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || strings.Contains(err.Error(), "secret") {
					t.Fatalf("ParseURL = %v, want an error with %q and no password", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (o.Cluster != nil) != tt.cluster || (o.Single != nil) == tt.cluster {
				t.Fatalf("cluster %v single %v, want cluster %v", o.Cluster != nil, o.Single != nil, tt.cluster)
			}
			if !slices.Equal(o.Addrs(), tt.addrs) {
				t.Errorf("addrs %v, want %v", o.Addrs(), tt.addrs)
			}
			user, pass, db := "", "", 0
			if o.Cluster != nil {
				user, pass = o.Cluster.Username, o.Cluster.Password
			} else {
				user, pass, db = o.Single.Username, o.Single.Password, o.Single.DB
			}
			if user != tt.user || pass != tt.pass || db != tt.db {
				t.Errorf("user %q password %q db %d, want %q %q %d", user, pass, db, tt.user, tt.pass, tt.db)
			}
			if tls := o.Cluster != nil && o.Cluster.TLSConfig != nil; tls != strings.HasPrefix(strings.ToLower(tt.url), "rediss+") {
				t.Errorf("TLS %v for %s", tls, tt.url)
			}
			o.SetTimeouts(time.Second, 2*time.Second, 3*time.Second)
			c := o.NewClient()
			defer c.Close()
			var dial, read, write time.Duration
			switch c := c.(type) {
			case *goredis.ClusterClient:
				dial, read, write = c.Options().DialTimeout, c.Options().ReadTimeout, c.Options().WriteTimeout
			case *goredis.Client:
				dial, read, write = c.Options().DialTimeout, c.Options().ReadTimeout, c.Options().WriteTimeout
			}
			if dial != time.Second || read != 2*time.Second || write != 3*time.Second || (o.Cluster != nil) != isCluster(c) {
				t.Errorf("client %T with timeouts %s %s %s, want 1s 2s 3s", c, dial, read, write)
			}

		})
	}
}

// The origin prints a bad REDIS_URL's error at startup, into its logs: whatever is wrong with
// the URL, the error must not show its password, nor a piece of it. url.Parse's errors quote the
// whole URL, and an unescaped '/', '?' or '#' in the password makes url.Parse split the URL
// inside the password, so that its message ("invalid port") quotes a piece of it.
func TestParseURLErrorsHideThePassword(t *testing.T) {
	tests := []struct {
		url, pass string
	}{
		{"redis://user:Sec1Ret2@h:notaport", "Sec1Ret2"},
		{"redis://user:Sec1/Ret2@h", "Sec1/Ret2"},
		{"redis://user:Sec1?Ret2@h:6379", "Sec1?Ret2"},
		{"redis://user:Sec1#Ret2@h:6379", "Sec1#Ret2"},
		{"redis://user:Sec1@Ret2@h:notaport", "Sec1@Ret2"},
		{"redis://user:Sec1:Ret2@h:notaport", "Sec1:Ret2"},
		{"redis://user:Sec1%2FRet2@h:notaport", "Sec1%2FRet2"},
		{"redis://user:Sec1%zzRet2@h:6379", "Sec1%zzRet2"},
		{"redis://user:1234/Ret2@h", "1234/Ret2"}, // parses: host "user:1234", path "/Ret2@h"
		{"redis://Sec1/Ret2@h:6379", "Sec1/Ret2"}, // a password alone, taken for a user name
		{"user:Sec1Ret2@h:6379", "Sec1Ret2"},
		{"http://user:Sec1Ret2@h:1", "Sec1Ret2"},
		{"redis://user:Sec1Ret2@h:1/0?bogus=1", "Sec1Ret2"},
		{"redis+cluster://user:Sec1Ret2@h1:notaport,h2:7001", "Sec1Ret2"},
		{"redis+cluster://user:Sec1/Ret2@h1:7000,h2:7001", "Sec1/Ret2"},
		{"redis+cluster://user:Sec1?Ret2@h1:7000,h2:7001", "Sec1?Ret2"},
		{"redis+cluster://user:Sec1@Ret2@h1:7000,,h2:7001", "Sec1@Ret2"},
		{"redis+cluster://user:Sec1:Ret2@h1:7000/4", "Sec1:Ret2"},
		{"REDIS+CLUSTER://user:Sec1Ret2@h1:7000?bogus=1", "Sec1Ret2"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			_, err := ParseURL(tt.url)
			if err == nil {
				t.Fatal("ParseURL accepted it, want an error")
			}
			msg := err.Error()
			for _, piece := range append(strings.FieldsFunc(tt.pass, func(r rune) bool { return strings.ContainsRune("/?#@:%", r) }), tt.pass) {
				if strings.Contains(msg, piece) {
					t.Fatalf("error shows %q of the password %q: %s", piece, tt.pass, msg)
				}
			}
			if !strings.Contains(msg, "xxxxx") {
				t.Errorf("error does not show where the password was: %s", msg)
			}
			t.Log(msg)
		})
	}
}
