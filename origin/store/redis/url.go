package redis

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/segedge/segedge/core/config"
)

// ClientOptions say how to connect to the Redis a URL names: one server, or a Redis Cluster.
// Exactly one of Single and Cluster is set.
type ClientOptions struct {
	Single  *goredis.Options
	Cluster *goredis.ClusterOptions
}

// ParseURL reads a Redis URL:
//
//	redis://[user:password@]host:port[/db][?options]     one server (goredis.ParseURL); rediss:// with TLS
//	redis+cluster://[user:password@]host:port,host:port,…[?options]
//	                                                     Redis Cluster, seeded with those nodes; rediss+cluster:// with TLS
//
// The cluster form lists its nodes in the host part because that is how operators write them;
// go-redis wants the first in the host and the others as addr= options (goredis.ParseClusterURL,
// which alone would read "h1:p1,h2:p2" as one bogus address). A cluster has database 0 only,
// so a cluster URL with another database is refused rather than silently using 0.
func ParseURL(rawURL string) (ClientOptions, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	scheme = strings.ToLower(scheme) // as url.Parse does, and config.CheckURL
	if !ok || (scheme != "redis+cluster" && scheme != "rediss+cluster") {
		o, err := goredis.ParseURL(rawURL)
		if err != nil {
			return ClientOptions{}, parseError(rawURL, err)
		}
		return ClientOptions{Single: o}, nil
	}
	scheme = strings.TrimSuffix(scheme, "+cluster")
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	userinfo, hosts := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hosts = authority[:i+1], authority[i+1:]
	}
	nodes := strings.Split(hosts, ",")
	for _, n := range nodes {
		if n == "" {
			return ClientOptions{}, parseError(rawURL, errors.New("empty node address"))
		}
	}
	u, err := url.Parse(scheme + "://" + userinfo + nodes[0] + tail)
	if err != nil {
		return ClientOptions{}, parseError(rawURL, err)
	}
	if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
		return ClientOptions{}, parseError(rawURL, fmt.Errorf("a Redis Cluster has database 0 only, not %s", db))
	}
	u.Path = ""
	q := u.Query()
	for _, n := range nodes[1:] {
		q.Add("addr", n)
	}
	u.RawQuery = q.Encode()
	o, err := goredis.ParseClusterURL(u.String())
	if err != nil {
		return ClientOptions{}, parseError(rawURL, err)
	}
	return ClientOptions{Cluster: o}, nil
}

// parseError is err, from parsing rawURL, with the URL (config.RedactURL) and err
// (config.RedactURLError: url.Parse's errors quote the URL they parsed) shown without the
// password: the origin prints it at startup, into logs.
func parseError(rawURL string, err error) error {
	return fmt.Errorf("parse Redis URL %q: %w", config.RedactURL(rawURL), config.RedactURLError(rawURL, err))
}

// SetTimeouts sets the dial, read and write timeouts, of the one server or of every node.
func (o ClientOptions) SetTimeouts(dial, read, write time.Duration) {
	if o.Cluster != nil {
		o.Cluster.DialTimeout, o.Cluster.ReadTimeout, o.Cluster.WriteTimeout = dial, read, write
		return
	}
	o.Single.DialTimeout, o.Single.ReadTimeout, o.Single.WriteTimeout = dial, read, write
}

// Addrs are the server's address, or the cluster nodes the client starts from (for logs).
func (o ClientOptions) Addrs() []string {
	if o.Cluster != nil {
		return o.Cluster.Addrs
	}
	return []string{o.Single.Addr}
}

// NewClient returns a client to the server (*goredis.Client) or the cluster
// (*goredis.ClusterClient, which sends each command, and each command of a pipeline, to the
// master of its key's slot).
func (o ClientOptions) NewClient() goredis.UniversalClient {
	if o.Cluster != nil {
		return goredis.NewClusterClient(o.Cluster)
	}
	return goredis.NewClient(o.Single)
}
