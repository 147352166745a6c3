// Package config binds command-line flags to environment variables, so every setting of the
// segedge programs can be given either way: `-nats-url` on the command line or NATS_URL in the
// environment. A flag given on the command line wins over the environment, which wins over the
// default. `-h` lists every setting with its variable.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Set is a flag set whose flags each have an environment variable.
type Set struct {
	fs  *flag.FlagSet
	env map[string]string // flag name -> variable name
}

// New returns an empty set for the program name. Usage is written to out.
func New(program string, out io.Writer) *Set {
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	fs.SetOutput(out)
	s := &Set{fs: fs, env: map[string]string{}}
	fs.Usage = func() { s.usage(out) }
	return s
}

// String defines a string setting.
func (s *Set) String(p *string, name, env, def, usage string) {
	s.fs.StringVar(p, name, def, usage)
	s.env[name] = env
}

// Bool defines a boolean setting.
func (s *Set) Bool(p *bool, name, env string, def bool, usage string) {
	s.fs.BoolVar(p, name, def, usage)
	s.env[name] = env
}

// Int defines an integer setting.
func (s *Set) Int(p *int, name, env string, def int, usage string) {
	s.fs.IntVar(p, name, def, usage)
	s.env[name] = env
}

// Float defines a floating-point setting.
func (s *Set) Float(p *float64, name, env string, def float64, usage string) {
	s.fs.Float64Var(p, name, def, usage)
	s.env[name] = env
}

// Duration defines a duration setting ("5s", "250ms").
func (s *Set) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	s.fs.DurationVar(p, name, def, usage)
	s.env[name] = env
}

// ErrHelp is returned by Parse when -h or -help was given; the usage has been printed.
var ErrHelp = flag.ErrHelp

// Parse reads args, then fills every flag not given on the command line from its environment
// variable (looked up with lookup, normally os.LookupEnv). An unparseable value is an error that
// names the variable.
func (s *Set) Parse(args []string, lookup func(string) (string, bool)) error {
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	if s.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", s.fs.Arg(0))
	}
	given := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	s.fs.VisitAll(func(f *flag.Flag) {
		env := s.env[f.Name]
		if given[f.Name] || env == "" {
			return
		}
		v, ok := lookup(env)
		if !ok {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("invalid value %q for %s: %v", v, env, err))
		}
	})
	return errors.Join(errs...)
}

func (s *Set) usage(out io.Writer) {
	fmt.Fprintf(out, "Usage of %s:\n", s.fs.Name())
	var names []string
	s.fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		f := s.fs.Lookup(n)
		def := f.DefValue
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(out, "  -%s (env %s, default %s)\n    \t%s\n", n, s.env[n], def, f.Usage)
	}
}

// Names returns each flag with its environment variable, for docs and tests.
func (s *Set) Names() map[string]string {
	out := make(map[string]string, len(s.env))
	for k, v := range s.env {
		out[k] = v
	}
	return out
}

// CheckAddr reports whether addr is a host:port a server can listen on.
func CheckAddr(setting, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q is not host:port: %v", setting, addr, err)
	}
	_ = host
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s %q: port %q is not a number from 0 to 65535", setting, addr, port)
	}
	return nil
}

// CheckURL reports whether raw is an absolute URL with one of the schemes (compared without
// regard to case, as url.Parse lower-cases the scheme). Its errors show the URL with its
// password hidden (RedactURL): the programs print them at startup, into logs.
func CheckURL(setting, raw string, schemes ...string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s %q is not a URL: %v", setting, RedactURL(raw), RedactURLError(raw, err))
	}
	if u.Host == "" {
		return fmt.Errorf("%s %q has no host; want e.g. %s://127.0.0.1:port", setting, RedactURL(raw), schemes[0])
	}
	for _, s := range schemes {
		if strings.EqualFold(u.Scheme, s) {
			return nil
		}
	}
	return fmt.Errorf("%s %q: scheme %q is not one of %s", setting, RedactURL(raw), u.Scheme, strings.Join(schemes, ", "))
}

// redacted stands for a hidden password, as in url.URL.Redacted.
const redacted = "xxxxx"

// RedactURL returns raw with the password of its user information replaced by "xxxxx", for
// messages and logs. It works on the text, not on a parse, because it must also hide the
// password of a URL that does not parse, or that url.Parse splits elsewhere than its author
// meant: in "redis://user:pa/ss@h" a password with an unescaped '/' ends the authority early,
// url.Parse sees host "user:pa" and path "/ss@h", and url.URL.Redacted hides nothing. So the
// user information is everything between "://" (or the start, without one) and the LAST '@';
// the user name before its first ':' is kept when it holds no '/', '?' or '#' (else the whole
// of it is hidden). It hides too much when an '@' sits in the path or query ("redis://h/0?a=b@c"
// becomes "redis://h:xxxxx@c"), which is the safe side for a message.
func RedactURL(raw string) string {
	prefix, rest, hidden, ok := splitUserinfo(raw)
	if !ok {
		return raw
	}
	at := len(hidden)
	user, _, hasPass := strings.Cut(hidden, ":")
	switch {
	case strings.ContainsAny(user, "/?#"):
		return prefix + redacted + rest[at:]
	case hasPass:
		return prefix + user + ":" + redacted + rest[at:]
	default:
		return raw // a user name and no password
	}
}

// splitUserinfo splits raw into what comes before the user information (the scheme and
// "://"), and the rest, whose part before the last '@' is the user information (userinfo).
// ok is false when raw has no '@'.
func splitUserinfo(raw string) (prefix, rest, userinfo string, ok bool) {
	rest = raw
	if i := strings.Index(raw, "://"); i >= 0 {
		prefix, rest = raw[:i+3], raw[i+3:]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return "", "", "", false
	}
	return prefix, rest, rest[:at], true
}

// RedactURLError returns err, an error from parsing the URL raw (by url.Parse, or by a parser
// built on it), in a form that does not show the password of raw. A *url.Error quotes the whole
// URL: it gets the redacted one. And when the password holds '/', '?' or '#' unescaped, the
// parser saw pieces of it as the host, path or query, and its message may quote such a piece
// (`invalid port ":pa" after host`): that message is replaced by a hint to percent-encode them.
// err is changed in place when it is or wraps a *url.Error.
func RedactURLError(raw string, err error) error {
	if err == nil {
		return nil
	}
	_, _, userinfo, ok := splitUserinfo(raw)
	if !ok {
		return err
	}
	if strings.ContainsAny(userinfo, "/?#") {
		return errors.New("not a valid URL: percent-encode '/', '?', '#', '@' and ':' in the user name and password (the parser's message is not shown, as it may quote part of the password)")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = RedactURL(ue.URL)
	}
	return err
}

// OneLine renders err on a single line (joined errors are separated by "; "), for the one line
// a program prints before it exits.
func OneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}
