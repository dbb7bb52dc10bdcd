package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hnboot/hnboot/fleet"
)

const fleetUsage = `usage: imaged fleet COMMAND [flags]

The admin API client of imaged serve.

Commands:
  status                                  hosts: desired against observed image, state
  assign  (--host H | --group G) IMAGE    assign name@version ("" or --clear: back to the YAML)
  revert  (--host H | --group G)          the big red button: revert on next boot / via the agent
  rollout                                 list rollouts
  rollout --name N --image I [--group G] [--hosts a,b] --percent P [--delete]
  why     HOST|MAC [--boots N]            the server's last decisions for a host, in words
  known-hosts                             ssh_known_hosts from the hosts' reported keys
  audit   [--since T] [--until T] [--actor WHO] [--host H] [--action A] [--n N]
                                          the audit log, oldest first (T: 24h, 2006-01-02, RFC 3339)

Flags (any command):
  --server URL       imaged serve's HTTP address ($IMAGED_SERVER)
  --token-file FILE  bearer token, first token of the file ($IMAGED_TOKEN_FILE)
  --json             print the API's JSON
`

type fleetClient struct {
	server, token string
	http          *http.Client
}

// parseAnywhere parses flags before and after positional arguments.
func parseAnywhere(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runFleet(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, fleetUsage)
		return nil
	}
	cmd := args[0]
	fs := flag.NewFlagSet("fleet "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	server := fs.String("server", os.Getenv("IMAGED_SERVER"), "")
	tokenFile := fs.String("token-file", os.Getenv("IMAGED_TOKEN_FILE"), "")
	asJSON := fs.Bool("json", false, "")
	host := fs.String("host", "", "")
	group := fs.String("group", "", "")
	clear := fs.Bool("clear", false, "")
	name := fs.String("name", "", "")
	image := fs.String("image", "", "")
	hosts := fs.String("hosts", "", "")
	percent := fs.Int("percent", 0, "")
	del := fs.Bool("delete", false, "")
	boots := fs.Int("boots", 3, "")
	n := fs.Int("n", 50, "")
	since := fs.String("since", "", "")
	until := fs.String("until", "", "")
	actor := fs.String("actor", "", "")
	action := fs.String("action", "", "")
	pos, err := parseAnywhere(fs, args[1:])
	if err != nil {
		return fmt.Errorf("fleet %s: %v\n%s", cmd, err, fleetUsage)
	}
	if *server == "" {
		return errors.New("fleet: --server URL (or $IMAGED_SERVER) is required")
	}
	c := &fleetClient{server: strings.TrimRight(*server, "/"), http: &http.Client{Timeout: 30 * time.Second}}
	if *tokenFile != "" {
		if c.token, err = readFirstToken(*tokenFile); err != nil {
			return err
		}
	}
	raw := func(method, path string, body any) error {
		b, err := c.do(method, path, body)
		if err == nil {
			_, err = stdout.Write(b)
		}
		return err
	}
	switch cmd {
	case "status":
		if *asJSON {
			return raw("GET", "/api/status", nil)
		}
		var st fleet.Status
		if err := c.get("/api/status", &st); err != nil {
			return err
		}
		printStatus(stdout, st)
	case "assign":
		img := ""
		if len(pos) == 1 {
			img = pos[0]
		} else if *image != "" {
			img = *image
		} else if !*clear {
			return errors.New("fleet assign: name the image (name@version), or --clear")
		}
		body := map[string]string{"host": *host, "group": *group, "image": img}
		if *asJSON {
			return raw("POST", "/api/assign", body)
		}
		if _, err := c.do("POST", "/api/assign", body); err != nil {
			return err
		}
		target := "host " + *host
		if *group != "" {
			target = "group " + *group
		}
		if img == "" {
			fmt.Fprintf(stdout, "%s: override cleared; the YAML assignment applies\n", target)
		} else {
			fmt.Fprintf(stdout, "%s: assigned %s\n", target, img)
		}
	case "revert":
		body := map[string]string{"host": *host, "group": *group}
		if len(pos) == 1 && *host == "" && *group == "" {
			body["host"] = pos[0]
		}
		if *asJSON {
			return raw("POST", "/api/revert", body)
		}
		b, err := c.do("POST", "/api/revert", body)
		if err != nil {
			return err
		}
		var res []fleet.RevertResult
		if err := json.Unmarshal(b, &res); err != nil {
			return fmt.Errorf("fleet revert: %w", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "HOST\tMAC\tREVERT ID\tASSIGNED NOW\tNOTE")
		for _, r := range res {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Host, r.MAC, r.ID, dash(r.PinnedTo), r.Note)
		}
		tw.Flush()
		fmt.Fprintln(stdout, "PXE-booting hosts get hn.revert=ID on their next boot; running hosts are told through their agent.")
	case "rollout":
		if *name == "" {
			if *asJSON {
				return raw("GET", "/api/rollouts", nil)
			}
			var ros []struct {
				fleet.Rollout
				Origin  string   `json:"origin"`
				Members []string `json:"members"`
			}
			if err := c.get("/api/rollouts", &ros); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ROLLOUT\tIMAGE\tGROUP\tPERCENT\tORIGIN\tMEMBERS")
			for _, r := range ros {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d%%\t%s\t%s\n", r.Name, r.Image, dash(r.Group), r.Percent, r.Origin, strings.Join(r.Members, ","))
			}
			return tw.Flush()
		}
		body := map[string]any{"name": *name, "image": *image, "group": *group, "percent": *percent, "delete": *del}
		if *hosts != "" {
			body["hosts"] = strings.Split(*hosts, ",")
		}
		if *asJSON {
			return raw("POST", "/api/rollout", body)
		}
		if _, err := c.do("POST", "/api/rollout", body); err != nil {
			return err
		}
		if *del {
			fmt.Fprintf(stdout, "rollout %s deleted\n", *name)
		} else {
			fmt.Fprintf(stdout, "rollout %s: %s at %d%%\n", *name, *image, *percent)
		}
	case "why":
		if len(pos) != 1 {
			return errors.New("fleet why: name one host (hostname or MAC)")
		}
		path := "/api/hosts/" + url.PathEscape(pos[0]) + "/why?boots=" + fmt.Sprint(*boots)
		if *asJSON {
			return raw("GET", path, nil)
		}
		var rep fleet.WhyReport
		if err := c.get(path, &rep); err != nil {
			return err
		}
		io.WriteString(stdout, fleet.RenderWhy(rep, time.Local))
	case "known-hosts":
		return raw("GET", "/api/known_hosts", nil)
	case "audit":
		q := url.Values{"n": {fmt.Sprint(*n)}}
		for k, v := range map[string]string{"since": *since, "until": *until, "who": *actor, "host": *host, "action": *action} {
			if v != "" {
				q.Set(k, v)
			}
		}
		path := "/api/audit?" + q.Encode()
		if *asJSON {
			return raw("GET", path, nil)
		}
		var es []fleet.AuditEntry
		if err := c.get(path, &es); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tWHO\tACTION\tTARGET\tDETAIL")
		for _, e := range es {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Who, e.Action, e.Target, e.Detail)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("fleet: unknown command %q\n%s", cmd, fleetUsage)
	}
	return nil
}

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
		return nil, fmt.Errorf("fleet: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("fleet: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("fleet: %s %s: %s: %s", method, path, resp.Status, e.Error)
		}
		return nil, fmt.Errorf("fleet: %s %s: %s", method, path, resp.Status)
	}
	return b, nil
}

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
