package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster of three masters (no replicas) that one test started from the
// redis-server binary: the stores promise to work on a cluster (DESIGN.md), and a single Redis
// accepts what a cluster refuses (CROSSSLOT commands, scripts touching keys of two slots, a SCAN
// that sees every key), so only a real cluster tests that promise. It runs on loopback ports in
// the test's temporary directory, persists nothing, and is stopped when the test ends.
type RedisCluster struct {
	// Addrs are the masters, "127.0.0.1:<port>".
	Addrs []string
	// URL names the cluster as REDIS_URL does: "redis+cluster://<addr>,<addr>,<addr>".
	URL string
	// Client is a cluster client of the test's own (closed at cleanup).
	Client *redis.ClusterClient
	// Prefix is a fresh key prefix, as StartRedis gives (the cluster is the test's alone, so
	// nothing is deleted: the servers go away with their data).
	Prefix string

	nodes []*clusterNode // the redis-server processes, Addrs[i] served by nodes[i]
}

// StopNode kills the master at Addrs[i] (no replica takes over), for tests of what a client
// does when one master is gone.
func (rc *RedisCluster) StopNode(i int) {
	rc.nodes[i].stop()
}

// clusterNode is one redis-server process of a cluster.
type clusterNode struct {
	cmd    *exec.Cmd
	dir    string        // its --dir, what CONFIG GET dir answers: how waitPing knows it is ours
	exited chan struct{} // closed when the process has exited; waitErr is then set
	// waitErr is cmd.Wait's error.
	waitErr error
}

// stop kills the process and waits until it has exited.
func (n *clusterNode) stop() {
	_ = n.cmd.Process.Kill()
	<-n.exited
}

// clusterMasters is the size of the cluster: the fewest masters redis-cli accepts, and enough
// for a batch's users to sit on different nodes.
const clusterMasters = 3

// clusterTimeout bounds the start of a cluster (processes, slot assignment, gossip); it takes
// about a second. nodesTimeout bounds each attempt at starting the processes (they answer
// PING within milliseconds), so that a failed attempt leaves time for the next ones.
const (
	clusterTimeout = 20 * time.Second
	nodesTimeout   = 5 * time.Second
)

// StartRedisCluster starts a three-master Redis Cluster for t. Without redis-server or
// redis-cli on PATH it skips t, or fails it when services are required
// (SEGEDGE_REQUIRE_SERVICES=1), like a missing REDIS_URL.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	server, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "redis-server (to start a Redis Cluster)")
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		missing(t, "redis-cli (to create a Redis Cluster)")
	}
	// A free port found here can be taken by another process before redis-server binds it:
	// start again on other ports when a server does not come up.
	var addrs []string
	var nodes []*clusterNode
	for attempt := 1; ; attempt++ {
		addrs, nodes, err = startClusterNodes(t, server)
		if err == nil || attempt == 3 {
			break
		}
		t.Logf("redis cluster: %v; starting again on other ports", err)
	}
	if err != nil {
		t.Fatalf("start redis cluster nodes: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	create := exec.CommandContext(ctx, cli, append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "0", "--cluster-yes")...)
	if out, err := create.CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := waitClusterOK(ctx, addrs); err != nil {
		t.Fatalf("redis cluster: %v", err)
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, DialTimeout: 2 * time.Second,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	t.Cleanup(func() { c.Close() })
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis cluster client: %v", err)
	}
	return &RedisCluster{Addrs: addrs, URL: "redis+cluster://" + strings.Join(addrs, ","), Client: c, Prefix: Prefix(t), nodes: nodes}
}

// startClusterNodes starts clusterMasters cluster-enabled redis-servers, each in a directory
// of its own under t.TempDir(), killed at cleanup, and waits until each answers PING, within
// nodesTimeout. When one does not, it stops them all and returns the error.
func startClusterNodes(t testing.TB, server string) ([]string, []*clusterNode, error) {
	// Two ports per node: clients, and the cluster bus (by default port+10000, which may be
	// taken or beyond 65535, so named with cluster-port).
	ports, err := freePorts(2 * clusterMasters)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), nodesTimeout)
	defer cancel()
	addrs := make([]string, clusterMasters)
	nodes := make([]*clusterNode, 0, clusterMasters)
	for i := range clusterMasters {
		addrs[i] = "127.0.0.1:" + strconv.Itoa(ports[2*i])
		n, err := startClusterNode(ctx, t, server, ports[2*i], ports[2*i+1])
		if err != nil {
			for _, n := range nodes {
				n.stop()
			}
			return nil, nil, err
		}
		nodes = append(nodes, n)
	}
	return addrs, nodes, nil
}

// startClusterNode starts a cluster-enabled redis-server on port (and busPort for the cluster
// bus) in a directory of its own under t.TempDir(), killed at cleanup (and, on Linux, when the
// test binary dies: see setParentDeathSignal), and waits until it answers PING.
func startClusterNode(ctx context.Context, t testing.TB, server string, port, busPort int) (*clusterNode, error) {
	dir := t.TempDir()
	addr, logFile := "127.0.0.1:"+strconv.Itoa(port), filepath.Join(dir, "redis.log")
	cmd := exec.Command(server,
		"--port", strconv.Itoa(port), "--cluster-port", strconv.Itoa(busPort), "--bind", "127.0.0.1",
		"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
		"--dir", dir, "--logfile", logFile, "--save", "", "--appendonly", "no", "--daemonize", "no")
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", server, err)
	}
	n := &clusterNode{cmd: cmd, dir: dir, exited: make(chan struct{})}
	go func() {
		n.waitErr = cmd.Wait()
		close(n.exited)
	}()
	// Registered after t.TempDir: cleanups run last-in first-out, so the server is gone
	// before its directory is removed.
	t.Cleanup(n.stop)
	if err := waitPing(ctx, addr, n); err != nil {
		n.stop()
		log, _ := os.ReadFile(logFile)
		return nil, fmt.Errorf("redis-server on %s: %w\n%s", addr, err, log)
	}
	return n, nil
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close() // held until all are found, so that none comes twice
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitPing waits until the redis-server of n answers PING at addr. It fails as soon as n has
// exited (e.g. its port was taken), rather than when ctx ends; and when another redis-server
// answers at addr (another test's, on a port that was free when freePorts looked): the
// answering server is n only if its working directory (CONFIG GET dir) is n's.
func waitPing(ctx context.Context, addr string, n *clusterNode) error {
	// Short timeouts, as a local redis-server answers in microseconds: something else that holds
	// the port may accept the connection and never answer, and go-redis ends a read at its
	// deadline, not when ctx is cancelled, so a PING in flight would hide n's exit for seconds.
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1,
		DialTimeout: 250 * time.Millisecond, ReadTimeout: 250 * time.Millisecond, WriteTimeout: 250 * time.Millisecond})
	defer c.Close()
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return checkDir(ctx, c, n.dir)
		}
		select {
		case <-n.exited:
			return fmt.Errorf("redis-server exited (%v) before it answered PING", n.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("no PING reply: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkDir returns an error unless the Redis of c runs in dir.
func checkDir(ctx context.Context, c *redis.Client, dir string) error {
	got, err := c.ConfigGet(ctx, "dir").Result()
	if err != nil {
		return fmt.Errorf("CONFIG GET dir: %w", err)
	}
	want := []string{dir}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		want = append(want, real)
	}
	if !slices.Contains(want, got["dir"]) {
		return fmt.Errorf("another redis-server answers there (its dir is %q, not %q)", got["dir"], dir)
	}
	return nil
}

// waitClusterOK waits until every node's CLUSTER INFO says cluster_state:ok, i.e. each knows
// every slot is served: redis-cli returns once the configuration is consistent, and a node can
// still answer CLUSTERDOWN for a moment after.
func waitClusterOK(ctx context.Context, addrs []string) error {
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		err := func() error {
			defer c.Close()
			for {
				info, err := c.ClusterInfo(ctx).Result()
				if err == nil && strings.Contains(info, "cluster_state:ok") {
					return nil
				}
				if err == nil {
					err = errors.New(strings.TrimSpace(strings.SplitN(info, "\n", 2)[0]))
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("node %s not ready (%v): %w", addr, err, ctx.Err())
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
