package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/hnboot/hnboot/fleet"
	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

const fleetPublishUsage = `Usage: imaged fleet publish [flags] IMAGE

Uploads IMAGE and its manifest (IMAGE.json, from mkimage build or rootfs)
to imaged serve and registers it as name@version, so that assign,
channels and rollouts can name it. The image is checked against its
manifest here first, then streamed; an interrupted upload resumes where
the server stopped (run the same command again, or let --retries do it).
The server checks the digest of what arrived, requires a signature when
it trusts keys (serve --trust), and refuses a name@version that exists
with another digest. Publishing what is already there is a no-op.

Example:
  imaged fleet publish --server http://127.0.0.1:8081 --token-file ci.token web-42.img
`

const fleetImagesUsage = `Usage: imaged fleet images [--server URL] [--token-file FILE] [--json]

Lists the fleet's images (declared in the YAML files, and published):
name@version, digest, size, age, where it comes from, and how many hosts
run it, are assigned it, or keep it in another slot (old, new, broken).

Example:
  imaged fleet images --server http://127.0.0.1:8081
`

const fleetPruneUsage = `Usage: imaged fleet prune [--apply] [--server URL] [--token-file FILE] [--json]

Lists the published images that nothing references: no host runs,
keeps (old, new, broken) or is assigned it, and no channel, rollout or
API assignment names it. Only with --apply are they removed (their
name@version, and the blob when no other name has its bytes). Images
declared in the YAML files are never removed.

Example:
  imaged fleet prune --server http://127.0.0.1:8081            # what would go
  imaged fleet prune --server http://127.0.0.1:8081 --apply
`

func fleetPublish(ctx context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetPublishUsage, std, true)
	retries := c.Int("retries", 5, "times an interrupted upload is resumed before giving up")
	if err := c.parse(args, 1, 1, "IMAGE"); err != nil {
		return err
	}
	img := c.Arg(0)
	mpath := layout.ManifestFor(img)
	mb, err := os.ReadFile(mpath)
	if err != nil {
		return fmt.Errorf("fleet publish: the manifest: %w (mkimage build and rootfs write it beside the image)", err)
	}
	m, err := manifest.Parse(mb)
	if err != nil {
		return fmt.Errorf("fleet publish: %s: %w", mpath, err)
	}
	start := time.Now()
	if err := m.VerifyFile(img, nil); err != nil {
		return fmt.Errorf("fleet publish: %s does not match its manifest: %w", img, err)
	}
	uploaded, first := int64(0), int64(-1)
	var rep fleet.PublishReply
	for try := 0; ; try++ {
		err := func() error {
			b, err := c.c.do("POST", "/api/images", json.RawMessage(mb))
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &rep); err != nil {
				return fmt.Errorf("fleet publish: %w", err)
			}
			if rep.Result != "upload" {
				return nil
			}
			if first < 0 {
				first = rep.Offset
			}
			n, r, err := c.c.upload(ctx, rep.Upload, img, rep.Offset, m.Size, std.Stderr)
			uploaded += n
			if err != nil {
				return err
			}
			rep = *r
			return nil
		}()
		if err == nil && rep.Result != "partial" && rep.Result != "upload" {
			break
		}
		if err != nil && !retryable(err) || try >= *retries {
			if err == nil {
				err = fmt.Errorf("upload incomplete: %d of %d bytes", rep.Offset, m.Size)
			}
			return fmt.Errorf("fleet publish %s: %w", img, err)
		}
		fmt.Fprintf(std.Stderr, "fleet publish: %v; resuming (%d/%d)\n", err, try+1, *retries)
		time.Sleep(time.Second)
	}
	if *c.asJSON {
		b, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Fprintln(std.Stdout, string(b))
		return nil
	}
	switch rep.Result {
	case "exists":
		fmt.Fprintf(std.Stdout, "%s: already published as %s (%s); nothing sent\n", img, rep.Image, rep.Digest)
	default:
		how := fmt.Sprintf("%s sent in %s", human(uploaded), time.Since(start).Round(10*time.Millisecond))
		if first > 0 {
			how += fmt.Sprintf(", resumed at byte %d", first)
		}
		fmt.Fprintf(std.Stdout, "%s: published %s %s (%s)\n", img, rep.Image, rep.Digest, how)
	}
	return nil
}

// errStatus is an HTTP answer that is not worth retrying.
type errStatus struct{ error }

// retryable: a broken connection, or a server error, is worth resuming
// after; a refusal (4xx) or a local problem is not.
func retryable(err error) bool {
	var es errStatus
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Code >= 500
	}
	return !errors.As(err, &es)
}

// upload streams img from offset to the server's upload URL.
func (c *fleetClient) upload(ctx context.Context, path, img string, offset, size int64, progress io.Writer) (int64, *fleet.PublishReply, error) {
	f, err := os.Open(img)
	if err != nil {
		return 0, nil, errStatus{err}
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0, nil, errStatus{err}
	}
	cr := &countReader{r: f}
	req, err := http.NewRequestWithContext(ctx, "PATCH", c.server+path, cr)
	if err != nil {
		return 0, nil, errStatus{err}
	}
	req.ContentLength = size - offset
	req.Header.Set("Upload-Offset", strconv.FormatInt(offset, 10))
	req.Header.Set("Content-Type", "application/octet-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// No overall timeout: a big image on a slow link takes what it takes.
	resp, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	if err != nil {
		return cr.n, nil, fmt.Errorf("PATCH %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		json.Unmarshal(b, &e)
		err := fmt.Errorf("PATCH %s: %s: %s", path, resp.Status, e.Error)
		if resp.StatusCode == http.StatusConflict {
			return cr.n, nil, err // the offset moved: ask again
		}
		return cr.n, nil, errStatus{err}
	}
	var rep fleet.PublishReply
	if err := json.Unmarshal(b, &rep); err != nil {
		return cr.n, nil, errStatus{err}
	}
	return cr.n, &rep, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func fleetImages(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetImagesUsage, std, true)
	if err := c.parse(args, 0, 0, ""); err != nil {
		return err
	}
	if *c.asJSON {
		return c.raw("GET", "/api/images", nil)
	}
	var imgs []fleet.ImageListing
	if err := c.c.get("/api/images", &imgs); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(std.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tSIZE\tAGE\tSOURCE\tRUNNING\tASSIGNED\tKEPT")
	for _, i := range imgs {
		size, age := human(i.Size), age(time.Since(i.Time))
		if i.Missing {
			size, age = "missing", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", i.Image, imgText(fleet.ImageInfo{Digest: i.Digest}), size, age, i.Source, i.Running, i.Assigned, i.Kept)
	}
	return tw.Flush()
}

func fleetPrune(_ context.Context, name string, args []string, std cli.IO) error {
	c := newFleetCmd(name, fleetPruneUsage, std, true)
	apply := c.Bool("apply", false, "remove them (without it: only list what would go)")
	if err := c.parse(args, 0, 0, ""); err != nil {
		return err
	}
	body := map[string]bool{"apply": *apply}
	if *c.asJSON {
		return c.raw("POST", "/api/prune", body)
	}
	b, err := c.c.do("POST", "/api/prune", body)
	if err != nil {
		return err
	}
	var res []fleet.PruneResult
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("fleet prune: %w", err)
	}
	tw := tabwriter.NewWriter(std.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tSIZE\tACTION")
	var n int
	var freed int64
	for _, r := range res {
		action := "kept: " + r.Kept
		switch {
		case r.Removed:
			action, n, freed = "removed", n+1, freed+r.Size
		case r.Kept == "":
			action, n, freed = "would remove", n+1, freed+r.Size
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Image, imgText(fleet.ImageInfo{Digest: r.Digest}), human(r.Size), action)
	}
	tw.Flush()
	if *apply {
		fmt.Fprintf(std.Stdout, "removed %d images (%s)\n", n, human(freed))
	} else {
		fmt.Fprintf(std.Stdout, "%d images (%s) would be removed: run again with --apply\n", n, human(freed))
	}
	return nil
}

// human formats a byte count in binary units (go-humanize: "404 MiB").
func human(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
