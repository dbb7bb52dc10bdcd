package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/cli"
)

var fleetGroup = &cli.Group{
	Doc: `imaged fleet is the admin client of imaged serve's API. Every command takes
--server URL ($IMAGED_SERVER: imaged serve's --admin address, e.g.
http://127.0.0.1:8081 or https://imaged:8081), --token-file FILE
($IMAGED_TOKEN_FILE: the first token of a tokens file, or a file holding
just the token), for https --ca FILE ($IMAGED_CA) or --fingerprint
sha256:HEX ($IMAGED_FINGERPRINT), and --json (print the API's JSON).`,
	Commands: []cli.Command{
		{Name: "status", Short: "hosts: desired against observed image, state, last check-in", Run: fleetStatus},
		{Name: "assign", Short: "assign an image to a host or group (TARGET IMAGE), or clear it", Run: fleetAssign},
		{Name: "revert", Short: "the big red button: revert a host or group on its next boot", Run: fleetRevert},
		{Name: "rollout", Short: "list rollouts; start, pause, resume, abort one with waves, or show its status", Group: rolloutGroup},
		{Name: "why", Short: "the server's last decisions for a host, in words", Run: fleetWhy},
		{Name: "hosts", Short: "the inventory: hosts with their facts, by label", Run: fleetHosts},
		{Name: "host", Short: "one host in full: facts, slots, packages, last boots", Run: fleetHost},
		{Name: "packages", Short: "which hosts run which version of a package", Run: fleetPackages},
		{Name: "known-hosts", Short: "ssh_known_hosts from the hosts' reported keys", Run: fleetKnownHosts},
		{Name: "audit", Short: "the admin audit log", Run: fleetAudit},
		{Name: "publish", Short: "upload an image and its manifest, and register it as name@version", Run: fleetPublish},
		{Name: "images", Short: "images with size, age and how many hosts run or are assigned each", Run: fleetImages},
		{Name: "prune", Short: "remove published images nothing references (a dry run without --apply)", Run: fleetPrune},
	},
}

// targetRule is how a positional TARGET is resolved, for the usage texts.
const targetRule = `TARGET is a host name, a MAC or a group name. The server resolves it: a
host (by name or MAC) or a group, whichever exists; a name that is both a
host and a group is refused as ambiguous (say --host or --group).`

const fleetStatusUsage = `Usage: imaged fleet status [--server URL] [--token-file FILE] [--json]

Lists every host of the fleet: its MAC and group, the image it should run
(desired) and the one it runs (current), its state (ok, trial, staged,
outdated, failed, revert-pending, never-seen) and its last check-in; then
check-ins from unknown MACs and the supervised services.

Example:
  imaged fleet status --server http://127.0.0.1:8081 --token-file ~/.hnboot-token
`

const fleetAssignUsage = `Usage: imaged fleet assign [flags] TARGET IMAGE
       imaged fleet assign [flags] (--host H | --group G) IMAGE
       imaged fleet assign [flags] TARGET --clear

Assigns IMAGE (name@version, declared in the fleet's images file) to a
host or a group, over what the YAML files say, until cleared; --clear
(or IMAGE "") goes back to the YAML assignment. Assigning a group clears
the host assignments of its members.

` + targetRule + `

Examples:
  imaged fleet assign --server http://127.0.0.1:8081 web base@1.3      # group web
  imaged fleet assign --server http://127.0.0.1:8081 web-07 base@1.3   # one host
  imaged fleet assign --server http://127.0.0.1:8081 --host web-07 --clear
`

const fleetRevertUsage = `Usage: imaged fleet revert [flags] TARGET
       imaged fleet revert [flags] (--host H | --group G | --all)

Reverts each host of TARGET: PXE-booting hosts get hn.revert=ID on their
next boot, hosts running the agent are told at their next check-in; a host
whose old image is known is also assigned it, so it is not updated again.

` + targetRule + `

Example:
  imaged fleet revert --server http://127.0.0.1:8081 web-07
`

const fleetRolloutUsage = `Usage: imaged fleet rollout [flags]
       imaged fleet rollout [flags] --name N --image I [--group G] [--hosts a,b] --percent P
       imaged fleet rollout [flags] --name N --delete
       imaged fleet rollout start|pause|resume|abort|status [flags] NAME

Without --name, lists the rollouts (from the YAML and the API) with their
members (for a rollout with waves, its state and the hosts it assigns its
image now). With --name, creates or advances an API rollout: the listed
hosts plus P percent of the group get image I; --delete removes it. A
rollout with waves runs itself once started: see "imaged fleet rollout
--help" for its commands.

Example:
  imaged fleet rollout --server http://127.0.0.1:8081 --name canary --image base@1.3 --group web --percent 10
`

const fleetWhyUsage = `Usage: imaged fleet why [flags] HOST|MAC [--boots N]

Explains in plain words what the server decided for the host's last boots
and check-ins: which image it should run and why (host, group, channel,
rollout, override), what it booted, reverts.

Example:
  imaged fleet why --server http://127.0.0.1:8081 52:54:00:12:34:56
`

const fleetKnownHostsUsage = `Usage: imaged fleet known-hosts [--server URL] [--token-file FILE]

Prints an ssh_known_hosts file built from the SSH host keys the hosts
reported, for ~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts.
`

const fleetAuditUsage = `Usage: imaged fleet audit [flags] [--since T] [--until T] [--actor WHO] [--host H] [--action A] [--n N]

Prints the admin actions (who, what, on which target), oldest first: the
last N that match the filters.

Example:
  imaged fleet audit --server http://127.0.0.1:8081 --since 24h --host web-07
`

type fleetClient struct {
	server, token string
	http          *http.Client
}

// fleetCmd is one fleet subcommand: its flags, with the common ones.
type fleetCmd struct {
	*cli.FlagSet
	server, tokenFile *string
	ca, fingerprint   *string
	asJSON            *bool
	std               cli.IO
	c                 *fleetClient
}

func newFleetCmd(name, usage string, std cli.IO, json bool) *fleetCmd {
	fs := cli.NewFlagSet(name, usage, std)
	c := &fleetCmd{FlagSet: fs, std: std, asJSON: new(bool)}
	c.server = fs.String("server", os.Getenv("IMAGED_SERVER"), "imaged serve's admin address `URL` (its --admin), e.g. http://127.0.0.1:8081 or https://imaged:8081 ($IMAGED_SERVER)")
	c.ca = fs.String("ca", os.Getenv("IMAGED_CA"), "https: trust the server's certificate if it chains to one in this PEM `FILE` (e.g. imaged serve's admin.crt) ($IMAGED_CA)")
	c.fingerprint = fs.String("fingerprint", os.Getenv("IMAGED_FINGERPRINT"), "https: trust only the server certificate with this `sha256:HEX` fingerprint, as imaged serve logs it ($IMAGED_FINGERPRINT)")
	c.tokenFile = fs.String("token-file", os.Getenv("IMAGED_TOKEN_FILE"), "bearer token: a `FILE` holding it, or a tokens file (its first token) ($IMAGED_TOKEN_FILE)")
	if json {
		c.asJSON = fs.Bool("json", false, "print the API's JSON")
	}
	return c
}

// parse parses args, wants between min and max positional arguments,
// and connects.
func (c *fleetCmd) parse(args []string, min, max int, what string) error {
	if err := c.Parse(args); err != nil {
		return err
	}
	if err := c.WantArgs(min, max, what); err != nil {
		return err
	}
	if *c.server == "" {
		return c.Usagef("--server URL (or $IMAGED_SERVER) is required")
	}
	hc, err := adminClient(*c.server, *c.ca, *c.fingerprint, 30*time.Second)
	if err != nil {
		return c.Usagef("%v", err)
	}
	c.c = &fleetClient{server: strings.TrimRight(*c.server, "/"), http: hc}
	if *c.tokenFile != "" {
		tok, err := readFirstToken(*c.tokenFile)
		if err != nil {
			return err
		}
		c.c.token = tok
	}
	return nil
}

// raw prints the API's reply as it is.
func (c *fleetCmd) raw(method, path string, body any) error {
	b, err := c.c.do(method, path, body)
	if err == nil {
		_, err = c.std.Stdout.Write(b)
	}
	return err
}

func fleetStatus(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetStatusUsage, std, true)
	if err := c.parse(args, 0, 0, ""); err != nil {
		return err
	}
	if *c.asJSON {
		return c.raw("GET", "/api/status", nil)
	}
	var st fleet.Status
	if err := c.c.get("/api/status", &st); err != nil {
		return err
	}
	printStatus(std.Stdout, st)
	return nil
}

// target is --host, --group or the positional TARGET (resolved by the
// server).
func (c *fleetCmd) targetFlags() (host, group *string) {
	return c.String("host", "", "the target is this `HOST` (name or MAC)"), c.String("group", "", "the target is this `GROUP`")
}

func fleetAssign(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetAssignUsage, std, true)
	host, group := c.targetFlags()
	clear := c.Bool("clear", false, "clear the assignment: the YAML files apply again")
	image := c.String("image", "", "the image, `name@version` (instead of the IMAGE argument)")
	if err := c.parse(args, 0, 2, "TARGET IMAGE"); err != nil {
		return err
	}
	var target fleet.Target
	pos := c.Args()
	switch {
	case *host != "" && *group != "":
		return c.Usagef("name a host or a group, not both")
	case *host != "" || *group != "":
		target = fleet.Target{Host: *host, Group: *group}
	case len(pos) == 0:
		return c.Usagef("name the target and the image: TARGET IMAGE (or --host H / --group G IMAGE)")
	default:
		target = fleet.Target{Name: pos[0]}
		pos = pos[1:]
	}
	img := *image
	switch {
	case len(pos) > 1:
		return c.Usagef("too many arguments: %q (with --host or --group, only IMAGE)", strings.Join(pos, " "))
	case len(pos) == 1 && img != "":
		return c.Usagef("the image is given twice: %q and --image %q", pos[0], img)
	case len(pos) == 1:
		img = pos[0]
	}
	if img != "" && *clear {
		return c.Usagef("give an image or --clear, not both")
	}
	if img == "" && !*clear {
		return c.Usagef("name the image (name@version), or --clear")
	}
	body := map[string]string{"host": target.Host, "group": target.Group, "target": target.Name, "image": img}
	if *c.asJSON {
		return c.raw("POST", "/api/assign", body)
	}
	b, err := c.c.do("POST", "/api/assign", body)
	if err != nil {
		return err
	}
	var res struct {
		Target string `json:"target"`
	}
	json.Unmarshal(b, &res)
	if res.Target == "" {
		res.Target = target.String()
	}
	if img == "" {
		fmt.Fprintf(std.Stdout, "%s: override cleared; the YAML assignment applies\n", res.Target)
	} else {
		fmt.Fprintf(std.Stdout, "%s: assigned %s\n", res.Target, img)
	}
	return nil
}

func fleetRevert(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetRevertUsage, std, true)
	host, group := c.targetFlags()
	all := c.Bool("all", false, "every host of the fleet (the whole-fleet red button)")
	if err := c.parse(args, 0, 1, "TARGET"); err != nil {
		return err
	}
	body := map[string]any{"host": *host, "group": *group}
	switch {
	case *all && (*host != "" || *group != "" || c.NArg() > 0):
		return c.Usagef("--all is every host: no TARGET, --host or --group with it")
	case *all:
		body = map[string]any{"all": true}
	case *host != "" && *group != "":
		return c.Usagef("name a host or a group, not both")
	case (*host != "" || *group != "") && c.NArg() > 0:
		return c.Usagef("the target is given twice: %q and --host/--group", c.Arg(0))
	case *host == "" && *group == "" && c.NArg() == 0:
		return c.Usagef("name the TARGET (or --host H / --group G)")
	case c.NArg() == 1:
		body["target"] = c.Arg(0)
	}
	if *c.asJSON {
		return c.raw("POST", "/api/revert", body)
	}
	b, err := c.c.do("POST", "/api/revert", body)
	if err != nil {
		return err
	}
	var res []fleet.RevertResult
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("fleet revert: %w", err)
	}
	tw := tabwriter.NewWriter(std.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tMAC\tREVERT ID\tASSIGNED NOW\tNOTE")
	for _, r := range res {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Host, r.MAC, r.ID, dash(r.PinnedTo), r.Note)
	}
	tw.Flush()
	fmt.Fprintln(std.Stdout, "PXE-booting hosts get hn.revert=ID on their next boot; running hosts are told through their agent.")
	return nil
}

func fleetRollout(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetRolloutUsage, std, true)
	rname := c.String("name", "", "the rollout to create, advance or delete (none: list)")
	image := c.String("image", "", "the rollout's image, name@version")
	group := c.String("group", "", "the group it rolls out to")
	hosts := c.String("hosts", "", "comma-separated hosts that get the image first")
	percent := c.Int("percent", 0, "percent of the group (beyond --hosts) that gets the image")
	del := c.Bool("delete", false, "delete the rollout")
	if err := c.parse(args, 0, 0, ""); err != nil {
		return err
	}
	if *rname == "" {
		if *c.asJSON {
			return c.raw("GET", "/api/rollouts", nil)
		}
		var ros []struct {
			fleet.Rollout
			Origin  string   `json:"origin"`
			Members []string `json:"members"`
			State   string   `json:"state"`
		}
		if err := c.c.get("/api/rollouts", &ros); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(std.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROLLOUT\tIMAGE\tGROUP\tPERCENT\tORIGIN\tMEMBERS")
		for _, r := range ros {
			pct := fmt.Sprintf("%d%%", r.Percent)
			if r.IsAuto() {
				pct = fmt.Sprintf("%d waves, %s", len(r.Waves), r.State)
			}
			members := strings.Join(r.Members, ",")
			if len(r.Members) > 8 {
				members = fmt.Sprintf("%s,... (%d hosts)", strings.Join(r.Members[:8], ","), len(r.Members))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Image, dash(strings.TrimSpace(strings.Join(append(r.Groups, r.Group), " "))), pct, r.Origin, members)
		}
		return tw.Flush()
	}
	body := map[string]any{"name": *rname, "image": *image, "group": *group, "percent": *percent, "delete": *del}
	if *hosts != "" {
		body["hosts"] = strings.Split(*hosts, ",")
	}
	if *c.asJSON {
		return c.raw("POST", "/api/rollout", body)
	}
	if _, err := c.c.do("POST", "/api/rollout", body); err != nil {
		return err
	}
	if *del {
		fmt.Fprintf(std.Stdout, "rollout %s deleted\n", *rname)
	} else {
		fmt.Fprintf(std.Stdout, "rollout %s: %s at %d%%\n", *rname, *image, *percent)
	}
	return nil
}

func fleetWhy(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetWhyUsage, std, true)
	boots := c.Int("boots", 3, "how many of the last boots to explain")
	if err := c.parse(args, 1, 1, "HOST or MAC"); err != nil {
		return err
	}
	path := "/api/hosts/" + url.PathEscape(c.Arg(0)) + "/why?boots=" + fmt.Sprint(*boots)
	if *c.asJSON {
		return c.raw("GET", path, nil)
	}
	var rep fleet.WhyReport
	if err := c.c.get(path, &rep); err != nil {
		return err
	}
	_, err := io.WriteString(std.Stdout, fleet.RenderWhy(rep, time.Local))
	return err
}

func fleetKnownHosts(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetKnownHostsUsage, std, false)
	if err := c.parse(args, 0, 0, ""); err != nil {
		return err
	}
	return c.raw("GET", "/api/known_hosts", nil)
}

func fleetAudit(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetAuditUsage, std, true)
	n := c.Int("n", 50, "how many entries, newest last")
	since := c.String("since", "", "only entries at or after `T` (24h, 2006-01-02, RFC 3339)")
	until := c.String("until", "", "only entries before `T`")
	actor := c.String("actor", "", "only actions by `WHO` (the token's name)")
	host := c.String("host", "", "only actions on `HOST` (name or MAC)")
	action := c.String("action", "", "only `ACTION`s (assign, revert, rollout, ...)")
	if err := c.parse(args, 0, 0, ""); err != nil {
		return err
	}
	q := url.Values{"n": {fmt.Sprint(*n)}}
	for k, v := range map[string]string{"since": *since, "until": *until, "who": *actor, "host": *host, "action": *action} {
		if v != "" {
			q.Set(k, v)
		}
	}
	path := "/api/audit?" + q.Encode()
	if *c.asJSON {
		return c.raw("GET", path, nil)
	}
	var es []fleet.AuditEntry
	if err := c.c.get(path, &es); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(std.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tWHO\tACTION\tTARGET\tDETAIL")
	for _, e := range es {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Who, e.Action, e.Target, e.Detail)
	}
	return tw.Flush()
}

func jsonUnmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("fleet: the server's answer: %w", err)
	}
	return nil
}

func sortStrings(s []string) { sort.Strings(s) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printStatus(w io.Writer, st fleet.Status) {
	if st.ConfigError != "" {
		fmt.Fprintf(w, "WARNING: the fleet directory %s does not load; serving the state loaded at %s:\n%s\n\n",
			st.Dir, st.LastGoodReload.Local().Format("2006-01-02 15:04:05"), st.ConfigError)
	}
	for _, x := range st.Warnings {
		fmt.Fprintln(w, "warning:", x)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tMAC\tGROUP\tDESIRED\tCURRENT\tSTATE\tLAST CHECK-IN")
	for _, h := range st.Hosts {
		last := "never"
		if h.LastCheckin != nil {
			last = h.LastCheckin.Time.Local().Format("2006-01-02 15:04:05")
		}
		state := h.State
		if h.LastCheckin != nil && h.LastCheckin.Trial {
			state += fmt.Sprintf(" (%d tries left)", h.LastCheckin.TriesLeft)
		}
		if h.RevertPending != nil {
			state += " " + h.RevertPending.ID
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Hostname, h.MAC, dash(h.Group), imgText(h.Desired), imgText(h.Current), state, last)
	}
	tw.Flush()
	if len(st.Unknown) > 0 {
		fmt.Fprintf(w, "\n%d check-ins from MACs not in the hosts files:\n", len(st.Unknown))
		for _, c := range st.Unknown {
			fmt.Fprintf(w, "  %s %s at %s\n", c.MAC, dash(c.Hostname), c.Time.Local().Format("2006-01-02 15:04:05"))
		}
	}
	if db := st.Database; db.Backend != "" {
		role := "another server runs the once-only work"
		if db.Leader {
			role = "this server runs the once-only work (leader)"
		}
		fmt.Fprintf(w, "\ndatabase: %s %s; %s\n", db.Backend, db.Where, role)
	}
	if len(st.Services) > 0 {
		fmt.Fprintln(w, "\nservices:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tSTATE\tPID\tRESTARTS\tLAST EXIT")
		for _, s := range st.Services {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", s.Name, s.State, s.PID, s.Restarts, dash(s.LastExit))
		}
		tw.Flush()
	}
}

func imgText(i fleet.ImageInfo) string {
	switch {
	case i.Digest == "":
		return "-"
	case i.Ref != "":
		return i.Ref
	}
	d := strings.TrimPrefix(i.Digest, "sha256:")
	return "sha256:" + d[:min(12, len(d))]
}

// readFirstToken reads the first token of a token file in the server's
// format ("NAME TOKEN" or "TOKEN" lines, '#' comments).
func readFirstToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("fleet: token file: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		fs := strings.Fields(l)
		return fs[len(fs)-1], nil
	}
	return "", fmt.Errorf("fleet: %s: no token", path)
}

func (c *fleetClient) do(method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.server+path, rd)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w%s", err, tlsHint(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("fleet: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, &apiError{resp.StatusCode, fmt.Sprintf("fleet: %s %s: %s: %s", method, path, resp.Status, e.Error)}
		}
		return nil, &apiError{resp.StatusCode, fmt.Sprintf("fleet: %s %s: %s", method, path, resp.Status)}
	}
	return b, nil
}

// apiError is the server's answer to a call that did not succeed.
type apiError struct {
	Code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func (c *fleetClient) get(path string, v any) error {
	b, err := c.do("GET", path, nil)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("fleet: GET %s: %w", path, err)
	}
	return nil
}
