package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The cluster is a real one: three masters share the slots, keys of different slots land on
// different masters and a multi-key command across slots is refused; and its servers are gone
// once the test that started it has ended.
func TestRedisClusterIsARealClusterAndStops(t *testing.T) {
	var addrs []string
	t.Run("cluster", func(t *testing.T) {
		rc := StartRedisCluster(t)
		addrs = rc.Addrs
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if len(rc.Addrs) != 3 || rc.URL != "redis+cluster://"+strings.Join(rc.Addrs, ",") {
			t.Fatalf("addrs %v, url %q", rc.Addrs, rc.URL)
		}
		shards, err := rc.Client.ClusterShards(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(shards) != 3 {
			t.Fatalf("%d shards, want 3: %+v", len(shards), shards)
		}
		masters := map[string]bool{}
		for i := range 30 {
			key := rc.Prefix + "{u:" + strconv.Itoa(i) + "}:k"
			if err := rc.Client.Set(ctx, key, "v", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			m, err := rc.Client.MasterForKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			masters[m.Options().Addr] = true
		}
		if len(masters) != 3 {
			t.Errorf("30 users' keys on masters %v, want all 3", masters)
		}
		err = rc.Client.MGet(ctx, rc.Prefix+"{u:1}:k", rc.Prefix+"{u:2}:k").Err()
		if err == nil || !strings.HasPrefix(err.Error(), "CROSSSLOT") {
			t.Errorf("MGET across slots: %v, want CROSSSLOT", err)
		}
	})
	if len(addrs) == 0 {
		return // skipped or failed above
	}
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
		if err := c.Ping(context.Background()).Err(); err == nil {
			t.Errorf("redis-server on %s still answers after its test ended", addr)
		}
		c.Close()
	}
}

// A cluster node that cannot come up is noticed at once, so that StartRedisCluster tries other
// ports while time remains: a redis-server that exited (its port was taken) fails the start
// before the attempt's timeout, and so does a redis-server that answers on the port but is not
// the one started (here the Redis of REDIS_URL, whose port ours cannot bind).
func TestStartClusterNodeFailsWhenItsServerIsNotTheOneAnswering(t *testing.T) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "redis-server")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0") // accepts connections, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	redisURL := os.Getenv("REDIS_URL")
	if redisURL == "" {
		missing(t, "Redis (REDIS_URL)")
	}
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	host, other, err := net.SplitHostPort(opt.Addr)
	if err != nil || host != "127.0.0.1" {
		t.Skipf("REDIS_URL's Redis is at %s, not on 127.0.0.1 where the node binds", opt.Addr)
	}
	for name, port := range map[string]string{
		"port held by a listener":      strconv.Itoa(taken.Addr().(*net.TCPAddr).Port),
		"port of another redis-server": other,
	} {
		t.Run(name, func(t *testing.T) {
			ports, err := freePorts(1) // for the cluster bus
			if err != nil {
				t.Fatal(err)
			}
			p, _ := strconv.Atoi(port)
			ctx, cancel := context.WithTimeout(context.Background(), nodesTimeout)
			defer cancel()
			n, err := startClusterNode(ctx, t, server, p, ports[0])
			if err == nil || ctx.Err() != nil {
				t.Fatalf("startClusterNode on port %s: node %v, error %v (attempt's context: %v); want an error before the timeout", port, n, err, ctx.Err())
			}
			t.Log(strings.SplitN(err.Error(), "\n", 2)[0])
		})
	}
}

// childEnv marks the test binary that TestClusterNodeDiesWithTheTestBinary starts.
const childEnv = "SEGEDGE_TESTENV_NODE_CHILD"

// A test binary that is killed runs no cleanup: its redis-servers die with it all the same, on
// Linux, rather than hold their ports and memory. The test starts itself again as a child that
// starts a node and waits, kills the child, and checks that the node stops answering.
func TestClusterNodeDiesWithTheTestBinary(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("only Linux kills a child process when its parent dies")
	}
	server, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "redis-server")
	}
	if os.Getenv(childEnv) == "1" { // the child: start a node, say where, wait to be killed
		ports, err := freePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), nodesTimeout)
		defer cancel()
		n, err := startClusterNode(ctx, t, server, ports[0], ports[1])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("node 127.0.0.1:%d %d\n", ports[0], n.cmd.Process.Pid)
		select {}
	}
	child := exec.Command(os.Args[0], "-test.run=^TestClusterNodeDiesWithTheTestBinary$", "-test.timeout=60s")
	child.Env = append(os.Environ(), childEnv+"=1", "TMPDIR="+t.TempDir())
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	var addr string
	var pid int
	for sc := bufio.NewScanner(out); addr == "" && sc.Scan(); {
		if _, err := fmt.Sscanf(sc.Text(), "node %s %d", &addr, &pid); err != nil {
			addr = ""
		}
	}
	_ = child.Process.Kill()
	_ = child.Wait()
	if addr == "" {
		t.Fatal("the child test binary did not start a node")
	}
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for c.Ping(ctx).Err() == nil {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the node on %s (pid %d) still answers after its test binary was killed", addr, pid)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
