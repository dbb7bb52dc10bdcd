package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hnboot/hnboot/agent"
	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/digest"
	"github.com/hnboot/hnboot/internal/durable"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/stage"
)

const hostpartNote = `
They work on the hostpart mounted at /hostpart (or --hostpart DIR) and
refuse to run without one; run them as root on an hnboot host.
`

const statusUsage = `Usage: imaged status [--json] [--hostpart DIR]

Shows the image slots on this host's hostpart (current, old, new, broken,
a rejected staged image), each with its image name, digest and size, the
trial state, what the next boot will do, images remembered as failed and
the last boots.
` + hostpartNote

const stageUsage = `Usage: imaged stage [--force] [--no-delta] [--digest sha256:HEX] [--key KEY.pub]... [--name N --version V] [--hostpart DIR] FILE|URL

Copies or downloads an image to hn-root-new.img.part (resuming an earlier
interrupted download of the same digest), checks its sha256, fsyncs it and
renames it to hn-root-new.img; the next boot promotes it on trial. Its
manifest (FILE.json, URL.json) goes first as hn-root-new.img.json when the
source has one; with a trusted key (--key, hostpart's .hnboot/trusted.pub)
it is required and its signature checked before anything is downloaded.
An image this host reverted or rejected before is refused unless --force.
From a URL whose manifest names a chunk index (URL.chunks), the image is
built from the chunks of the images already on hostpart and only the
missing chunks are fetched (Range requests); --no-delta downloads it whole.

Examples:
  imaged stage web.img
  imaged stage --key fleet.key.pub http://imaged:8080/blobs/sha256:...
` + hostpartNote

const revertUsage = `Usage: imaged revert [--hostpart DIR]

Writes system-revert: at the next boot hn-root.img becomes
hn-root-broken.img and hn-root-old.img becomes current. Reboot to apply;
remove /hostpart/system-revert to cancel.
` + hostpartNote

const markGoodUsage = `Usage: imaged mark-good [--hostpart DIR]

Confirms the current trial boot: removes hn-root.trial, so the init no
longer counts tries down and reverts. imaged agent does this by itself
once its health checks pass.
` + hostpartNote

// hostFlags parses a host command's flags and positional arguments
// (nargs of them) and finds its hostpart.
func hostFlags(fs *cli.FlagSet, args []string, nargs int, what string) (string, error) {
	hp := fs.String("hostpart", "", "hostpart directory (default: the /hostpart mount)")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if err := fs.WantArgs(nargs, nargs, what); err != nil {
		return "", err
	}
	dir, err := hostpart.Locator{Dir: *hp}.Locate()
	if err != nil {
		return "", fmt.Errorf("%s: %w", fs.Name(), err)
	}
	return dir, nil
}

func runStatus(_ context.Context, name string, args []string, std cli.IO) error {
	fs := cli.NewFlagSet(name, statusUsage, std)
	jsonOut := fs.Bool("json", false, "print JSON for scripts")
	dir, err := hostFlags(fs, args, 0, "")
	if err != nil {
		return err
	}
	return hostStatus(dir, *jsonOut, std.Stdout)
}

func runStage(ctx context.Context, name string, args []string, std cli.IO) error {
	fs := cli.NewFlagSet(name, stageUsage, std)
	force := fs.Bool("force", false, "stage even an image this host remembers as failed")
	noDelta := fs.Bool("no-delta", false, "download the image whole, not by delta from the images on hostpart")
	digest := fs.String("digest", "", "expected `sha256:HEX`; the download is refused if it differs (taken from a /blobs/sha256:... URL)")
	iname := fs.String("name", "", "image name, shown by imaged status")
	version := fs.String("version", "", "image version, shown by imaged status")
	var keys []string
	fs.Func("key", "trusted public key `KEY.pub` (repeatable): require FILE.json or URL.json signed by it (hostpart's .hnboot/trusted.pub is always trusted)", func(s string) error {
		keys = append(keys, s)
		return nil
	})
	dir, err := hostFlags(fs, args, 1, "FILE or URL")
	if err != nil {
		return err
	}
	k, err := stage.ReadKeys(keys...)
	if err != nil {
		return fmt.Errorf("stage: --key: %w", err)
	}
	return hostStage(ctx, dir, fs.Arg(0), *digest, *iname, *version, *force, *noDelta, k, std.Stdout)
}

func runRevert(_ context.Context, name string, args []string, std cli.IO) error {
	dir, err := hostFlags(cli.NewFlagSet(name, revertUsage, std), args, 0, "")
	if err != nil {
		return err
	}
	return hostRevert(dir, std.Stdout)
}

func runMarkGood(_ context.Context, name string, args []string, std cli.IO) error {
	dir, err := hostFlags(cli.NewFlagSet(name, markGoodUsage, std), args, 0, "")
	if err != nil {
		return err
	}
	return hostMarkGood(dir, std.Stdout)
}

// Status is `imaged status --json`.
type Status struct {
	hostpart.State
	Failed  []stage.Failure `json:"failed,omitempty"`
	Pending []string        `json:"pending"`
}

func readStatus(dir string) (Status, error) {
	st, err := hostpart.Read(dir, hostpart.ReadOptions{Hash: true, Boots: 5})
	if err != nil {
		return Status{}, err
	}
	s := Status{State: st, Pending: []string{}}
	failed, err := stage.LoadFailed(dir)
	if err != nil {
		return s, err
	}
	for _, d := range failed.Digests() {
		s.Failed = append(s.Failed, failed[d])
	}
	old, nw := st.Slot(layout.SlotOld), st.Slot(layout.SlotNew)
	switch {
	case st.RevertPending && old.Present:
		s.Pending = append(s.Pending, fmt.Sprintf("revert at the next boot: %s (%s) becomes current, %s becomes %s", old.File, old.Label(), layout.Current, layout.Broken))
	case st.RevertPending:
		s.Pending = append(s.Pending, fmt.Sprintf("%s present but no %s: the next boot only clears it", layout.RevertTrigger, layout.Old))
	case nw.Present:
		s.Pending = append(s.Pending, fmt.Sprintf("promote at the next boot: %s (%s) becomes current, on trial", nw.File, nw.Label()))
	}
	if st.Trial && st.TrialProblem == "" && st.TriesLeft <= 0 {
		s.Pending = append(s.Pending, fmt.Sprintf("revert at the next boot: %s has no tries left", layout.Trial))
	}
	for _, p := range st.Parts {
		s.Pending = append(s.Pending, fmt.Sprintf("download in progress or interrupted: %s (%s so far)", p.File, stage.SizeString(p.Size)))
	}
	return s, nil
}

func hostStatus(dir string, jsonOut bool, stdout io.Writer) error {
	s, err := readStatus(dir)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	fmt.Fprintf(stdout, "hostpart %s\n\n", dir)
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tFILE\tIMAGE\tDIGEST\tSIZE")
	rows := s.Images
	if s.Rejected != nil {
		rows = append(rows, *s.Rejected)
	}
	for _, im := range rows {
		if !im.Present {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\n", im.Slot, im.File)
			continue
		}
		label := "-"
		if im.Name != "" {
			label = strings.TrimSpace(im.Name + " " + im.Version)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\tsha256:%s\t%s\n", im.Slot, im.File, label, digest.Short(im.Digest), stage.SizeString(im.Size))
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	switch {
	case s.TrialProblem != "":
		fmt.Fprintf(stdout, "trial:    %s\n", s.TrialProblem)
	case s.Trial:
		fmt.Fprintf(stdout, "trial:    %s is on trial, %d tries left (the agent confirms it after its health checks; or imaged mark-good)\n", layout.Current, s.TriesLeft)
	default:
		fmt.Fprintf(stdout, "trial:    none (%s is confirmed)\n", layout.Current)
	}
	if len(s.Pending) == 0 {
		fmt.Fprintln(stdout, "pending:  nothing")
	}
	for i, p := range s.Pending {
		fmt.Fprintf(stdout, "%s%s\n", map[bool]string{true: "pending:  ", false: "          "}[i == 0], p)
	}
	for i, f := range s.Failed {
		fmt.Fprintf(stdout, "%ssha256:%s  %s  %s\n", map[bool]string{true: "failed:   ", false: "          "}[i == 0], digest.Short(f.Digest), f.Time.Local().Format("2006-01-02 15:04"), f.Reason)
	}
	if len(s.Boots) > 0 {
		fmt.Fprintln(stdout, "\nlast boots:")
		for _, b := range s.Boots {
			fmt.Fprintf(stdout, "  %d  %s  %s\n", b.N, b.Time.Local().Format("2006-01-02 15:04:05"), b.Summary)
		}
	}
	return nil
}

var blobRE = regexp.MustCompile(`/blobs/(sha256:[0-9a-f]{64})$`)

func hostStage(ctx context.Context, dir, src, dg, name, version string, force, noDelta bool, keys stage.Keys, stdout io.Writer) error {
	var source stage.Source
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		source = stage.HTTPSource{URL: src, Client: agent.NetGetter{}}
		if m := blobRE.FindStringSubmatch(src); m != nil && dg == "" {
			dg = m[1]
		}
	} else {
		source = stage.FileSource{Path: src}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	req := stage.Request{Source: source, Digest: dg, Name: name, Version: version, Force: force, Keys: keys, HashSlots: true, NoDelta: noDelta}
	bar := isTerminal(stdout)
	if bar {
		req.Progress = func(done, total int64) { progress(stdout, done, total) }
	}
	start := time.Now()
	res, err := stage.Stage(ctx, dir, req)
	if bar {
		fmt.Fprintln(stdout)
	}
	if err != nil {
		return err
	}
	switch res.Already {
	case layout.SlotCurrent:
		fmt.Fprintf(stdout, "%s is already the current image (%s): nothing staged\n", digest.Short(res.Digest), layout.Current)
		return nil
	case layout.SlotNew:
		fmt.Fprintf(stdout, "%s is already staged as %s\n", digest.Short(res.Digest), layout.New)
		return nil
	}
	fmt.Fprintf(stdout, "staged %s: %s, %s in %v", layout.New, res.Digest, stage.SizeString(res.Size), time.Since(start).Round(time.Millisecond))
	if res.Reused > 0 {
		fmt.Fprintf(stdout, " (%s resumed from an earlier download)", stage.SizeString(res.Reused))
	}
	if res.Delta != nil {
		fmt.Fprintf(stdout, "\nby delta: %s", res.Delta)
	} else if res.Fallback != "" {
		fmt.Fprintf(stdout, "\ndownloaded whole, not by delta: %s", res.Fallback)
	}
	if res.Manifest != "" {
		fmt.Fprintf(stdout, "\nwith its manifest %s (%s)", layout.ManifestFor(layout.New), res.Manifest)
	}
	fmt.Fprintf(stdout, "\nreboot to promote it: it boots on trial and is confirmed by the agent's health checks or imaged mark-good\n")
	return nil
}

func progress(w io.Writer, done, total int64) {
	const width = 30
	if total <= 0 {
		fmt.Fprintf(w, "\r%s", stage.SizeString(done))
		return
	}
	n := int(done * width / total)
	fmt.Fprintf(w, "\r[%s%s] %3d%% %s / %s ", strings.Repeat("#", n), strings.Repeat(" ", width-n), done*100/total, stage.SizeString(done), stage.SizeString(total))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func hostRevert(dir string, stdout io.Writer) error {
	st, err := hostpart.Read(dir, hostpart.ReadOptions{Hash: true})
	if err != nil {
		return fmt.Errorf("revert: %w", err)
	}
	old, cur := st.Slot(layout.SlotOld), st.Slot(layout.SlotCurrent)
	if !old.Present {
		return fmt.Errorf("revert: there is no %s in %s: nothing to revert to (%s is the only bootable image); stage an image with imaged stage instead", layout.Old, dir, layout.Current)
	}
	if st.RevertPending {
		fmt.Fprintf(stdout, "%s is already present: reboot to revert\n", layout.RevertTrigger)
		return nil
	}
	body := fmt.Sprintf("imaged revert %s\n", time.Now().UTC().Format(time.RFC3339))
	if err := durable.Root(dir).WriteFile(layout.RevertTrigger, []byte(body)); err != nil {
		return fmt.Errorf("revert: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s: at the next boot %s (%s) becomes %s and %s (%s) becomes current.\nReboot to apply; rm %s to cancel.\n",
		layout.RevertTrigger, layout.Current, cur.Label(), layout.Broken, layout.Old, old.Label(), dirJoin(dir, layout.RevertTrigger))
	if st.Slot(layout.SlotNew).Present {
		fmt.Fprintf(stdout, "note: %s stays staged; the revert boot does not promote it\n", layout.New)
	}
	return nil
}

func hostMarkGood(dir string, stdout io.Writer) error {
	st, err := hostpart.Read(dir, hostpart.ReadOptions{Hash: true})
	if err != nil {
		return fmt.Errorf("mark-good: %w", err)
	}
	if !st.Trial {
		fmt.Fprintf(stdout, "%s is not on trial (no %s): nothing to confirm\n", layout.Current, layout.Trial)
		return nil
	}
	if err := agent.MarkGood(dir); err != nil {
		return fmt.Errorf("mark-good: %w", err)
	}
	fmt.Fprintf(stdout, "confirmed %s (%s): removed %s (it had %d tries left)\n", layout.Current, st.Slot(layout.SlotCurrent).Label(), layout.Trial, st.TriesLeft)
	return nil
}

func dirJoin(dir, name string) string { return strings.TrimRight(dir, "/") + "/" + name }
