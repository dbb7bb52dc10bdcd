package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/cli"
)

var rolloutGroup = &cli.Group{
	Doc: `imaged fleet rollout lists the rollouts (without a command, as before:
"imaged fleet rollout [--name N ...]" also creates, advances or deletes a
rollout advanced by hand), and runs the rollouts with waves: start one,
pause, resume or abort it, and show its waves and hosts.`,
	Default: fleetRollout,
	Commands: []cli.Command{
		{Name: "start", Short: "start a rollout with waves: its first wave begins", Run: rolloutActionCmd(fleet.ActionStart)},
		{Name: "pause", Short: "stop moving hosts and starting waves (hosts in flight go on)", Run: rolloutActionCmd(fleet.ActionPause)},
		{Name: "resume", Short: "go on after a pause, or after a halt (its failures acknowledged)", Run: rolloutActionCmd(fleet.ActionResume)},
		{Name: "abort", Short: "end the rollout for good (--revert: revert the hosts it moved)", Run: rolloutActionCmd(fleet.ActionAbort)},
		{Name: "status", Short: "a rollout's state, each wave and each host with its reason", Run: rolloutStatusCmd},
	},
}

var rolloutActionDoc = map[string]string{
	fleet.ActionStart:  "Starts a rollout with waves (declared in the fleet's YAML or created with\nPOST /api/rollout): its first wave's hosts are assigned the image, and\neach later wave starts by itself once the one before passed its gate.",
	fleet.ActionPause:  "Pauses a running rollout: no host is moved and no wave starts; hosts\nalready moved go on and are watched, and failures still halt it.",
	fleet.ActionResume: "Resumes a paused rollout, or a halted one: the failures that halted it\nare acknowledged, only new ones count towards its threshold.",
	fleet.ActionAbort:  "Ends a rollout for good. Hosts that have not booted its image yet lose\nthe assignment; with --revert the hosts running it are reverted too\n(pinned to the image they ran before), else they keep it.",
}

func rolloutActionCmd(action string) func(context.Context, string, []string, cli.IO) error {
	return func(_ context.Context, name string, args []string, std cli.IO) error {
		usage := fmt.Sprintf("Usage: %s [flags] NAME\n\n%s\nThe action is audited under the token's name.\n\nExample:\n  %s --server http://127.0.0.1:8081 web-3\n",
			name, rolloutActionDoc[action], name)
		c := newFleetCmd(name, usage, std, true)
		revert := new(bool)
		if action == fleet.ActionAbort {
			revert = c.Bool("revert", false, "also revert the hosts the rollout moved")
		}
		if err := c.parse(args, 1, 1, "NAME"); err != nil {
			return err
		}
		var body any
		if *revert {
			body = map[string]bool{"revert": true}
		}
		path := "/api/rollouts/" + url.PathEscape(c.Arg(0)) + "/" + action
		if *c.asJSON {
			return c.raw("POST", path, body)
		}
		b, err := c.c.do("POST", path, body)
		if err != nil {
			return err
		}
		var st fleet.RolloutStatus
		if err := jsonUnmarshal(b, &st); err != nil {
			return err
		}
		fmt.Fprintf(std.Stdout, "rollout %s: %s\n", st.Name, st.State)
		return nil
	}
}

const rolloutStatusUsage = `Usage: imaged fleet rollout status [flags] NAME

Shows a rollout with waves: its state (pending, running, paused, halted,
aborted, done) and why, each wave with what it takes, its gate and its
hosts by state, and each host with its state (pending, staging,
rebooting, trial, confirmed, failed, reverted, skipped) and the reason.

Example:
  imaged fleet rollout status --server http://127.0.0.1:8081 web-3
`

func rolloutStatusCmd(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, rolloutStatusUsage, std, true)
	if err := c.parse(args, 1, 1, "NAME"); err != nil {
		return err
	}
	path := "/api/rollouts/" + url.PathEscape(c.Arg(0))
	if *c.asJSON {
		return c.raw("GET", path, nil)
	}
	var st fleet.RolloutStatus
	if err := c.c.get(path, &st); err != nil {
		return err
	}
	printRollout(std.Stdout, st)
	return nil
}

func printRollout(w io.Writer, st fleet.RolloutStatus) {
	fmt.Fprintf(w, "rollout %s: %s (%s) to %s (%s)\n", st.Name, st.Image, shortDigest(st.Digest), st.Target, st.Origin)
	fmt.Fprintf(w, "state:  %s", st.State)
	if st.Reason != "" {
		fmt.Fprintf(w, " — %s", st.Reason)
	}
	if !st.Since.IsZero() {
		fmt.Fprintf(w, " (since %s)", st.Since.Local().Format("2006-01-02 15:04:05"))
	}
	fmt.Fprintf(w, "\nwave:   %d of %d; moves %s\n\n", st.Wave, len(st.Waves), st.Window)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tTAKES\tGATE\tSTATE\tHOSTS\tCONFIRMED\tUPDATING\tPENDING\tFAILED\tOTHER")
	for _, wv := range st.Waves {
		c := wv.Count
		updating := c["staging"] + c["rebooting"] + c["trial"]
		other := c["reverted"] + c["skipped"]
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", wv.Wave, wv.What, wv.Gate, wv.State, wv.Hosts, c["confirmed"], updating, c["pending"], c["failed"], other)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tMAC\tWAVE\tSTATE\tSINCE\tREASON")
	for _, h := range st.Hosts {
		since := "-"
		if !h.Since.IsZero() {
			since = h.Since.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", dash(h.Host), h.MAC, h.Wave, h.State, since, h.Reason)
	}
	tw.Flush()
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	return "sha256:" + d[:min(12, len(d))]
}
