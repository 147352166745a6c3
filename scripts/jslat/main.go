// Command jslat measures JetStream's own publish latency on this machine: the wait that every
// accepted event includes before the origin answers 202. It publishes rounds of -msgs messages
// (one per partition, as the origin's ingest does) asynchronously and waits for every
// acknowledgement, -rate rounds per second from -concurrency goroutines, and prints the round
// latency percentiles.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	url := flag.String("nats-url", nats.DefaultURL, "NATS server")
	rate := flag.Int("rate", 200, "rounds per second")
	msgs := flag.Int("msgs", 8, "messages per round (one per partition)")
	size := flag.Int("size", 1200, "bytes per message")
	dur := flag.Duration("duration", 10*time.Second, "how long")
	conc := flag.Int("concurrency", 16, "rounds in flight at most")
	storage := flag.String("storage", "file", "file or memory")
	msgid := flag.Bool("msgid", true, "set Nats-Msg-Id (dedup window)")
	flag.Parse()
	if *rate <= 0 || *msgs <= 0 || *size <= 0 || *conc <= 0 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "jslat: -rate, -msgs, -size, -concurrency and -duration must be positive")
		os.Exit(2)
	}
	if err := run(*url, *rate, *msgs, *size, *dur, *conc, *storage, *msgid); err != nil {
		fmt.Fprintln(os.Stderr, "jslat:", err)
		os.Exit(1)
	}
}

func run(url string, rate, msgs, size int, dur time.Duration, conc int, storage string, msgid bool) error {
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+time.Minute)
	defer cancel()
	name := fmt.Sprintf("JSLAT%d", time.Now().UnixNano())
	st := jetstream.FileStorage
	if storage == "memory" {
		st = jetstream.MemoryStorage
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: st, Duplicates: 2 * time.Minute}); err != nil {
		return fmt.Errorf("create stream %s: %w", name, err)
	}
	defer js.DeleteStream(context.Background(), name) //nolint:errcheck // best effort: a test stream
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	var mu sync.Mutex
	var lat []time.Duration
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(dur)
	seq := 0
	for time.Now().Before(end) {
		<-tick.C
		seq++
		sem <- struct{}{}
		wg.Add(1)
		go func(seq int) {
			defer wg.Done()
			defer func() { <-sem }()
			t0 := time.Now()
			fs := make([]jetstream.PubAckFuture, msgs)
			for p := range msgs {
				m := &nats.Msg{Subject: name + "." + strconv.Itoa(p), Data: body, Header: nats.Header{}}
				if msgid {
					m.Header.Set(jetstream.MsgIDHeader, strconv.Itoa(seq)+"-"+strconv.Itoa(p))
				}
				f, err := js.PublishMsgAsync(m)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					return
				}
				fs[p] = f
			}
			for _, f := range fs {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					fmt.Fprintln(os.Stderr, err)
				case <-ctx.Done():
					fmt.Fprintln(os.Stderr, "no acknowledgement:", ctx.Err())
				}
			}
			d := time.Since(t0)
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		}(seq)
	}
	wg.Wait()
	if len(lat) == 0 {
		return fmt.Errorf("no round was acknowledged")
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("storage %s msgid %v: %d rounds of %d×%dB: p50 %v p90 %v p99 %v p99.9 %v max %v\n", storage, msgid, len(lat), msgs, size,
		q(0.5).Round(10*time.Microsecond), q(0.9).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), q(0.999).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	return nil
}
