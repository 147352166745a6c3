package bus

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded is a NATS server with JetStream running inside the origin process: the default
// when no NATS_URL is set, so `go run ./origin` works on a laptop with nothing installed.
type Embedded struct {
	srv *server.Server
}

// EmbeddedOptions configure the embedded server.
type EmbeddedOptions struct {
	// Addr to listen on, host:port. The default port is 4250, not 4222, so that it never clashes
	// with a NATS server already running on the machine.
	Addr string
	// StoreDir keeps JetStream's data, so accepted events survive a restart.
	StoreDir string
	// ReadyTimeout bounds the wait for the server to accept connections.
	ReadyTimeout time.Duration
}

// StartEmbedded starts the server and waits until it accepts connections.
func StartEmbedded(o EmbeddedOptions) (*Embedded, error) {
	host, portStr, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS address %q: %w", o.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS address %q: bad port", o.Addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	// Fail fast with the usual message when the port is taken; nats-server would only log it.
	if port != server.RANDOM_PORT {
		l, err := net.Listen("tcp", o.Addr)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS: listen on %s: %w", o.Addr, err)
		}
		l.Close()
	}
	srv, err := server.NewServer(&server.Options{
		Host:      host,
		Port:      port,
		JetStream: true,
		StoreDir:  o.StoreDir,
		NoSigs:    true,
		NoLog:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(o.ReadyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS on %s: not ready within %s", o.Addr, o.ReadyTimeout)
	}
	return &Embedded{srv: srv}, nil
}

// ClientURL is the nats:// URL clients (the edge) connect to.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}
