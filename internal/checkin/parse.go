package checkin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hnboot/hnboot/internal/digest"
	"golang.org/x/crypto/ssh"
)

// MaxBytes bounds a check-in body. An agent's report with its services,
// health observations and failures stays well under it.
const MaxBytes = 256 << 10

// Limits on single fields. A check-in is untrusted input that ends up in
// logs, terminals (imaged fleet status, why), ssh_known_hosts and the
// store, so text is bounded and free of control characters.
const (
	maxHostname = 253  // DNS name
	maxWord     = 64   // source, action, states, revert IDs, file names
	maxLine     = 253  // kernel, image labels, check and service names
	maxText     = 1024 // a note, an error message, a detail
	maxKey      = 8192 // one public key in authorized_keys format (RSA 16384 is ~2.8 KiB)
	maxList     = 64   // notes, pending, services, observations
	maxDigests  = 256  // failed_digests, failures
	maxKeys     = 16   // ssh_host_keys
	maxProblems = 16   // last_boot.problems
	maxTries    = 1 << 16
)

// ErrTooLarge is the reason for a body over MaxBytes.
var ErrTooLarge = fmt.Errorf("body over %d bytes", MaxBytes)

// Error is why Parse refused a check-in: the field, as a JSON path
// ("images.old", "ssh_host_keys[1]", "body" for the whole), and the reason.
type Error struct {
	MAC   string // canonical, when the mac field itself was valid
	Field string
	Err   error
}

func (e *Error) Error() string {
	if e.MAC != "" {
		return fmt.Sprintf("check-in from %s: %s: %v", e.MAC, e.Field, e.Err)
	}
	return fmt.Sprintf("check-in: %s: %v", e.Field, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Parse reads one check-in (JSON, at most MaxBytes) from r and validates
// it. The result is canonical: the MAC in lower-case colon form, an empty
// source as "init", SSH keys re-encoded without comments and their
// fingerprints computed (those sent are replaced). Errors are *Error.
func Parse(r io.Reader) (*Checkin, error) { return ParseFor(r, nil) }

// ParseFor is Parse for a body the transport attributed to mac (the boot
// server looks a client up in its ARP table): a body without "mac" is
// taken to come from it. A body's own MAC wins: the lookup by IP may be
// stale, the host knows which NIC it booted from.
func ParseFor(r io.Reader, mac net.HardwareAddr) (*Checkin, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxBytes+1))
	if err != nil {
		return nil, &Error{Field: "body", Err: err}
	}
	if len(b) > MaxBytes {
		return nil, &Error{Field: "body", Err: ErrTooLarge}
	}
	var c Checkin
	if err := json.Unmarshal(b, &c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, &Error{Field: te.Field, Err: fmt.Errorf("%s is not %s", te.Value, te.Type)}
		}
		return nil, &Error{Field: "body", Err: err}
	}
	if c.MAC == "" && len(mac) == 6 {
		c.MAC = mac.String()
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return &c, nil
}

// check validates c and makes it canonical; the first problem found is
// returned.
func (c *Checkin) check() *Error {
	if c.MAC == "" {
		return &Error{Field: "mac", Err: errors.New("missing")}
	}
	hw, err := net.ParseMAC(c.MAC)
	if err != nil || len(hw) != 6 {
		return &Error{Field: "mac", Err: fmt.Errorf("%s is not an Ethernet MAC", quote(c.MAC))}
	}
	c.MAC = hw.String()
	bad := func(field string, err error) *Error { return &Error{MAC: c.MAC, Field: field, Err: err} }

	switch c.Source {
	case "":
		c.Source = SourceInit // what an init sent before it named itself
	case SourceInit, SourceAgent:
	default:
		return bad("source", fmt.Errorf("%s: want init or agent", quote(c.Source)))
	}
	if err := hostname(c.Hostname); err != nil {
		return bad("hostname", err)
	}
	for _, l := range c.lists() {
		if l.n > l.max {
			return bad(l.name, fmt.Errorf("%d entries, over the limit of %d", l.n, l.max))
		}
	}
	for _, d := range c.digests() {
		if *d.p != "" && !digest.Valid(*d.p) {
			return bad(d.name, fmt.Errorf("%s is not sha256:<64 lowercase hex>", quote(*d.p)))
		}
	}
	for i, d := range c.FailedDigests {
		if !digest.Valid(d) {
			return bad(fmt.Sprintf("failed_digests[%d]", i), fmt.Errorf("%s is not sha256:<64 lowercase hex>", quote(d)))
		}
	}
	for i, f := range c.Failures {
		if !digest.Valid(f.Digest) {
			return bad(fmt.Sprintf("failures[%d].digest", i), fmt.Errorf("%s is not sha256:<64 lowercase hex>", quote(f.Digest)))
		}
	}
	for _, w := range c.words() {
		if err := word(*w.p); err != nil {
			return bad(w.name, err)
		}
	}
	for _, t := range c.texts() {
		if err := checkText(*t.p, t.multiline, t.max); err != nil {
			return bad(t.name, err)
		}
	}
	for _, n := range c.counts() {
		if n.v < 0 || n.v > n.max {
			return bad(n.name, fmt.Errorf("%d is out of 0..%d", n.v, n.max))
		}
	}
	if c.Facts != nil {
		if err := c.Facts.check(); err != nil {
			err.MAC = c.MAC
			return err
		}
	}
	c.Fingerprints = nil
	for i, k := range c.SSHHostKeys {
		key, fp, err := hostKey(k)
		if err != nil {
			return bad(fmt.Sprintf("ssh_host_keys[%d]", i), err)
		}
		c.SSHHostKeys[i] = key
		c.Fingerprints = append(c.Fingerprints, fp)
	}
	return nil
}

// Tidy makes the free text and the lists of c fit the limits Parse
// enforces: control characters become spaces or U+FFFD, long text is cut
// (ending in "…") and long lists lose their tail. Senders call it before
// sending, so a long or odd error message of their own (a proxy's HTML
// page, a health command's output) does not get the whole check-in
// refused. Structured fields (MAC, digests, keys, hostname) are left as
// they are: Parse judges them.
func (c *Checkin) Tidy() {
	for _, l := range c.lists() {
		if l.n > l.max {
			l.cut(l.max)
		}
	}
	for _, t := range c.texts() {
		*t.p = tidyText(*t.p, t.multiline, t.max)
	}
	if c.Facts != nil {
		c.Facts.tidy()
	}
}

type field struct {
	name string
	p    *string
}

// digests are the single digest fields; empty means unknown.
func (c *Checkin) digests() []field {
	fs := []field{
		{"booted", &c.Booted}, {"images.current", &c.Images.Current}, {"images.old", &c.Images.Old},
		{"images.new", &c.Images.New}, {"images.broken", &c.Images.Broken},
		{"booted_image.head", &c.BootedImage.Head},
	}
	if c.Staging != nil {
		fs = append(fs, field{"staging.digest", &c.Staging.Digest})
	}
	return fs
}

// words are short tokens the senders take from their own constants.
func (c *Checkin) words() []field {
	fs := []field{{"action", &c.Action}, {"revert_applied", &c.RevertApplied},
		{"booted_image.file", &c.BootedImage.File}, {"booted_image.source", &c.BootedImage.Source}}
	if c.Staging != nil {
		fs = append(fs, field{"staging.state", &c.Staging.State}, field{"staging.mode", &c.Staging.Mode})
	}
	if c.Health != nil {
		fs = append(fs, field{"health.state", &c.Health.State})
	}
	if c.LastBoot != nil {
		fs = append(fs, field{"last_boot.action", &c.LastBoot.Action})
	}
	for i := range c.Services {
		fs = append(fs, field{fmt.Sprintf("services[%d].state", i), &c.Services[i].State})
	}
	return fs
}

type textField struct {
	field
	multiline bool
	max       int
}

// texts are the free-text fields with their limits: Parse checks them,
// Tidy fits them.
func (c *Checkin) texts() []textField {
	line := func(name string, p *string, max int) textField { return textField{field{name, p}, false, max} }
	text := func(name string, p *string) textField { return textField{field{name, p}, true, maxText} }
	ts := []textField{
		line("kernel", &c.Kernel, maxLine),
		line("reboot_policy", &c.RebootPolicy, maxLine),
		text("rebooting", &c.Rebooting),
	}
	for i := range c.Notes {
		ts = append(ts, text(fmt.Sprintf("notes[%d]", i), &c.Notes[i]))
	}
	for i := range c.Pending {
		ts = append(ts, text(fmt.Sprintf("pending[%d]", i), &c.Pending[i]))
	}
	for i := range c.Failures {
		ts = append(ts, text(fmt.Sprintf("failures[%d].reason", i), &c.Failures[i].Reason))
	}
	if s := c.Staging; s != nil {
		ts = append(ts, line("staging.image", &s.Image, maxLine), text("staging.error", &s.Error), text("staging.fallback", &s.Fallback))
	}
	if h := c.Health; h != nil {
		ts = append(ts, text("health.reason", &h.Reason))
		for i := range h.Last {
			ts = append(ts, line(fmt.Sprintf("health.last[%d].check", i), &h.Last[i].Check, maxLine),
				text(fmt.Sprintf("health.last[%d].detail", i), &h.Last[i].Detail))
		}
	}
	if b := c.LastBoot; b != nil {
		ts = append(ts, line("last_boot.image", &b.Image, maxLine), text("last_boot.summary", &b.Summary))
		for i := range b.Problems {
			ts = append(ts, text(fmt.Sprintf("last_boot.problems[%d]", i), &b.Problems[i]))
		}
	}
	for i := range c.Services {
		s := &c.Services[i]
		ts = append(ts, line(fmt.Sprintf("services[%d].name", i), &s.Name, maxLine),
			text(fmt.Sprintf("services[%d].last_exit", i), &s.LastExit),
			line(fmt.Sprintf("services[%d].log_file", i), &s.LogFile, maxText))
	}
	return ts
}

type listField struct {
	name   string
	n, max int
	cut    func(n int)
}

func list[T any](name string, s *[]T, max int) listField {
	return listField{name, len(*s), max, func(n int) { *s = (*s)[:n] }}
}

func (c *Checkin) lists() []listField {
	ls := []listField{
		list("failed_digests", &c.FailedDigests, maxDigests),
		list("failures", &c.Failures, maxDigests),
		list("ssh_host_keys", &c.SSHHostKeys, maxKeys),
		list("notes", &c.Notes, maxList),
		list("pending", &c.Pending, maxList),
		list("services", &c.Services, maxList),
	}
	if c.Health != nil {
		ls = append(ls, list("health.last", &c.Health.Last, maxList))
	}
	if c.LastBoot != nil {
		ls = append(ls, list("last_boot.problems", &c.LastBoot.Problems, maxProblems))
	}
	return ls
}

type count struct {
	name   string
	v, max int64
}

const maxInt = 1<<63 - 1

func (c *Checkin) counts() []count {
	ns := []count{{"tries_left", int64(c.TriesLeft), maxTries}, {"uptime_seconds", c.UptimeSeconds, maxInt},
		{"booted_image.size", c.BootedImage.Size, maxInt}}
	if s := c.Staging; s != nil {
		ns = append(ns, count{"staging.done", s.Done, maxInt}, count{"staging.total", s.Total, maxInt}, count{"staging.reused", s.Reused, maxInt},
			count{"staging.local", s.Local, maxInt}, count{"staging.fetched", s.Fetched, maxInt}, count{"staging.chunks", s.Chunks, maxInt},
			count{"staging.local_chunks", s.LocalChunks, maxInt}, count{"staging.fetched_chunks", s.FetchedChunks, maxInt}, count{"staging.took_ms", s.TookMS, maxInt})
	}
	return ns
}

// hostname allows what DNS names and Linux hostnames use in practice. No
// spaces or commas: the name goes into ssh_known_hosts lines.
func hostname(s string) error {
	if len(s) > maxHostname {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), maxHostname)
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '.' || b == '_') {
			return fmt.Errorf("%s: byte %d is not a letter, digit, '-', '.' or '_'", quote(s), i)
		}
	}
	return nil
}

// word is printable ASCII without spaces, or empty.
func word(s string) error {
	if len(s) > maxWord {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), maxWord)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fmt.Errorf("%s: byte %d is not printable ASCII without spaces", quote(s), i)
		}
	}
	return nil
}

// allowed reports whether r may stand in free text: no control, format
// (bidirectional overrides, zero-width) or line-separator characters,
// which would let a host rewrite what an operator's terminal shows; in
// multi-line text, newline and tab.
func allowed(r rune, multiline bool) bool {
	if multiline && (r == '\n' || r == '\t') {
		return true
	}
	return !unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp)
}

func checkText(s string, multiline bool, max int) error {
	if len(s) > max {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), max)
	}
	for i, r := range s {
		if !allowed(r, multiline) {
			return fmt.Errorf("%s: character %U at byte %d is not allowed", quote(s), r, i)
		}
	}
	return nil
}

func tidyText(s string, multiline bool, max int) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case allowed(r, multiline):
			return r
		case r == '\r' && multiline:
			return -1 // CRLF becomes LF
		case unicode.IsSpace(r):
			return ' '
		}
		return '\uFFFD'
	}, s)
	if len(s) <= max {
		return s
	}
	const ellipsis = "…"
	cut := max - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// hostKey parses one public key in authorized_keys format and returns it
// re-encoded (no options, no comment) with its SHA256 fingerprint. The
// re-encoding is what ends up in ssh_known_hosts: a host cannot smuggle a
// second line or options into it.
func hostKey(s string) (key, fp string, err error) {
	if len(s) > maxKey {
		return "", "", fmt.Errorf("%d bytes, over the limit of %d", len(s), maxKey)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", "", errors.New("more than one line")
	}
	pk, _, opts, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return "", "", err
	}
	if len(opts) > 0 {
		return "", "", fmt.Errorf("options %s before the key", quote(strings.Join(opts, ",")))
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))), ssh.FingerprintSHA256(pk), nil
}

// quote is s for an error message: quoted, escaped and cut short, since
// it came from the network and the message goes to logs and back to the
// sender.
func quote(s string) string {
	const n = 80
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return fmt.Sprintf("%q…", s[:cut])
	}
	return fmt.Sprintf("%q", s)
}
