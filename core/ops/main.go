package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/segedge/segedge/core/config"
)

// Program is what Main needs from a segedge program.
type Program struct {
	Name     string
	Settings *config.Set
	// Validate checks the parsed settings without touching the network.
	Validate func() error
	// LogFormat and LogLevel point at the parsed logging settings.
	LogFormat, LogLevel *string
	// Run runs until ctx is done (SIGINT or SIGTERM) and then shuts down.
	Run func(ctx context.Context, log *slog.Logger) error
}

// Main parses args and the environment, runs the program until SIGINT or SIGTERM and returns
// the exit code: 0 after a clean shutdown, 2 for bad settings, 1 when running failed. Every error
// is one line on stderr ("origin: listen on …: address already in use"), never a stack trace.
func Main(p Program, args []string, stderr io.Writer) int {
	var rawUsers bool
	var userKey string
	p.Settings.Bool(&rawUsers, "log-raw-user-ids", "SEGEDGE_LOG_RAW_USER_IDS", false, "log user ids as they are instead of a keyed hash (debugging only: profiles are personal data)")
	p.Settings.String(&userKey, "log-user-key", "SEGEDGE_LOG_USER_KEY", "", "key of the user id hashes in logs; the same on every process lets one user's records be followed across them (default: random per process)")
	if err := p.Settings.Parse(args, os.LookupEnv); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return 2
	}
	if err := p.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, config.OneLine(err))
		return 2
	}
	log, err := NewLogger(stderr, *p.LogFormat, *p.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return 2
	}
	SetUserLogging(rawUsers, userKey)
	if rawUsers {
		log.Warn("SEGEDGE_LOG_RAW_USER_IDS is set: user ids are logged as they are")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := p.Run(ctx, log); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, config.OneLine(err))
		return 1
	}
	return 0
}
