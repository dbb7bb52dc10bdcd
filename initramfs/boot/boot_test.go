package boot

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/stage"
)

const imgSize = 256 << 10

var imgA, imgB = fakeImage("A", imgSize), fakeImage("B", imgSize)

// TestRun boots fake hosts end to end (rotation, the talk with imaged,
// the download, identity, switch_root) and checks where each boot ended
// and what it left on hostpart.
func TestRun(t *testing.T) {
	key, err := manifest.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		image    string        // switched to, "" for a rescue
		current  string        // image in hn-root.img after the boot
		old      string        // image in hn-root-old.img
		files    []string      // present on hostpart after the boot
		gone     []string      // absent
		console  []string      // substrings of the log
		checkins int           // check-ins the server got
		within   time.Duration // the boot takes at most this long (0: 5 s)
		failed   bool          // B's digest is in the failure memory
	}
	for _, tc := range []struct {
		name    string
		cmdline string
		slots   map[string][]byte
		setup   func(t *testing.T, w *world, srv *fakeImaged)
		want    want
	}{
		{"no server: local boot, no network", "", map[string][]byte{layout.Current: imgA}, nil,
			want{image: layout.Current, current: "A", gone: []string{layout.Server}, console: []string{"no network at boot: no hn.server="}}},
		{"no server, no MAC remembered: NIC drivers for the default hostname, the MAC remembered", "", map[string][]byte{layout.Current: imgA}, nil,
			want{image: layout.Current, current: "A", files: []string{layout.DefaultMAC}, console: []string{"NIC drivers load for the boot NIC's MAC", "hostname=hn-525400123456"}}},
		{"no server, MAC remembered: no NIC drivers, the same hostname", "", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) {
				os.MkdirAll(filepath.Join(w.paths.Hostpart, layout.StateDir), 0o755)
				if err := os.WriteFile(filepath.Join(w.paths.Hostpart, layout.DefaultMAC), []byte(fakeMAC+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want{image: layout.Current, current: "A", console: []string{"no NIC drivers: no server, and the boot NIC's MAC is remembered", "hostname=hn-525400123456"}}},
		{"assigned is current: no download, checked in, server remembered", "hn.server=SRV", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { srv.assign(srv.publish(t, "A", imgA, nil, false)) },
			want{image: layout.Current, current: "A", files: []string{layout.Server}, checkins: 1, console: []string{"already is the assigned image"}}},
		{"assigned B: downloaded, promoted on trial, booted", "hn.server=SRV", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { srv.assign(srv.publish(t, "B", imgB, nil, false)) },
			want{image: layout.Current, current: "B", old: "A", files: []string{layout.Trial, layout.ManifestFor(layout.Current)}, gone: []string{layout.NewPart, layout.New},
				checkins: 1, console: []string{"fetching the assigned image", "image downloaded", "action=promote"}}},
		{"assigned B, signed, key in the initramfs", "hn.server=SRV", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) {
				trustKey(t, w, key)
				srv.assign(srv.publish(t, "B", imgB, key, false))
			},
			want{image: layout.Current, current: "B", old: "A", checkins: 1, console: []string{"manifest=\"signed, key", "signature valid"}}},
		{"assigned B, unsigned, key in the initramfs: refused before downloading", "hn.server=SRV", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) {
				trustKey(t, w, key)
				srv.assign(srv.publish(t, "B", imgB, nil, false))
			},
			want{image: layout.Current, current: "A", gone: []string{layout.New, layout.NewPart}, checkins: 1, console: []string{"not signed"}}},
		{"corrupt blob: discarded, remembered as failed, A boots", "hn.server=SRV", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) {
				srv.assign(srv.publish(t, "B", imgB, nil, false))
				srv.corrupt = true
			},
			want{image: layout.Current, current: "A", gone: []string{layout.New, layout.NewPart}, failed: true, checkins: 1, console: []string{"corrupt: discarded and remembered as failed"}}},
		{"failed before: not downloaded", "hn.server=SRV", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) {
				a := srv.assign(srv.publish(t, "B", imgB, nil, false))
				f, _ := stage.LoadFailed(w.paths.Hostpart)
				f.Add(w.paths.Hostpart, stage.Failure{Digest: a.Digest, Reason: "reverted"})
			},
			want{image: layout.Current, current: "A", gone: []string{layout.New}, failed: true, checkins: 1, console: []string{"remembered as failed on this host (reverted"}}},
		{"fleet revert wins over the download", "hn.server=SRV hn.revert=r1", map[string][]byte{layout.Current: imgB, layout.Old: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) {
				srv.assign(srv.publish(t, "C", fakeImage("C", imgSize), nil, false))
			},
			want{image: layout.Current, current: "A", gone: []string{layout.New, layout.NewPart}, files: []string{layout.Broken}, checkins: 1, console: []string{"action=revert", "a revert wins over a download"}}},
		{"staged by the agent: promoted, the assigned one waits", "hn.server=SRV", map[string][]byte{layout.Current: imgA, layout.New: imgB},
			func(t *testing.T, w *world, srv *fakeImaged) {
				srv.assign(srv.publish(t, "C", fakeImage("C", imgSize), nil, false))
			},
			want{image: layout.Current, current: "B", old: "A", gone: []string{layout.NewPart}, checkins: 1, console: []string{"waits for the next boot"}}},
		{"remembered server", "", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) {
				os.MkdirAll(filepath.Join(w.paths.Hostpart, layout.StateDir), 0o755)
				os.WriteFile(filepath.Join(w.paths.Hostpart, layout.Server), []byte(srv.URL+"\n"), 0o644)
				srv.assign(srv.publish(t, "B", imgB, nil, false))
			},
			want{image: layout.Current, current: "B", old: "A", checkins: 1, console: []string{"remembered from the last check-in"}}},
		{"hn.fetch=off: checked in, not downloaded", "hn.server=SRV hn.fetch=off", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { srv.assign(srv.publish(t, "B", imgB, nil, false)) },
			want{image: layout.Current, current: "A", checkins: 1, console: []string{"not fetching: hn.fetch=off"}}},
		{"hn.checkin=off: no network", "hn.server=SRV hn.checkin=off", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { srv.assign(srv.publish(t, "B", imgB, nil, false)) },
			want{image: layout.Current, current: "A", console: []string{"no network at boot: hn.checkin=off"}}},
		{"kexec'd boot: no rotation, no network", "hn.server=SRV hn.kexeced=hn-root.img", map[string][]byte{layout.Current: imgA, layout.New: imgB},
			func(t *testing.T, w *world, srv *fakeImaged) { srv.assign(srv.publish(t, "B", imgB, nil, false)) },
			want{image: layout.Current, current: "A", files: []string{layout.New}, console: []string{"rotation already done by the previous kernel's init (hn.kexeced=hn-root.img)", "already kexec'd once"}}},
		{"unknown MAC: local boot, still checks in", "hn.server=SRV", map[string][]byte{layout.Current: imgA}, nil,
			want{image: layout.Current, current: "A", checkins: 1, console: []string{"imaged does not know this MAC"}}},
		{"DHCP never answers: the budget ends it", "hn.server=SRV hn.checkin=300ms", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.netHang = true },
			want{image: layout.Current, current: "A", within: 2 * time.Second, console: []string{"network not configured; booting the local image"}}},
		{"imaged never answers: the budget ends it, no check-in", "hn.server=SRV hn.checkin=300ms", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { srv.hang = true },
			want{image: layout.Current, current: "A", within: 2 * time.Second, console: []string{"imaged did not say what to run", "check-in skipped: imaged did not answer in time"}}},
		{"server refuses the connection", "hn.server=http://127.0.0.1:1", map[string][]byte{layout.Current: imgA}, nil,
			want{image: layout.Current, current: "A", within: 2 * time.Second, console: []string{"connection refused"}}},
		{"current does not mount: previous image", "", map[string][]byte{layout.Current: imgA, layout.Old: imgB},
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.badMount["A"] = true },
			want{image: layout.Old, current: "A", console: []string{"falling back to the previous image"}}},
		{"nothing boots: rescue", "", map[string][]byte{layout.Current: imgA},
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noInit["A"] = true },
			want{current: "A", console: []string{"no image could be booted", "has no /sbin/init"}}},
		{"no hostpart: rescue", "", nil,
			func(t *testing.T, w *world, srv *fakeImaged) { w.sys.noHostpart = true },
			want{console: []string{"no partition matches LABEL=hostpart after 30s", "loadall"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.slots)
			srv := newImaged(t)
			w.sys.http = &httpgetClient
			if tc.setup != nil {
				tc.setup(t, w, srv)
			}
			start := time.Now()
			out := w.boot(strings.ReplaceAll(tc.cmdline, "SRV", srv.URL))
			took := time.Since(start)
			con := w.console() + strings.Join(w.sys.calls, "\n")
			if out.Image != tc.want.image || (tc.want.image == "") != (out.Rescue != nil) {
				t.Errorf("boot ended with %+v, want image %q", out, tc.want.image)
			}
			if tc.want.image != "" && w.sys.switched == "" {
				t.Errorf("no switch_root")
			}
			if got := w.slot(layout.Current); got != tc.want.current {
				t.Errorf("%s holds %q, want %q", layout.Current, got, tc.want.current)
			}
			if got := w.slot(layout.Old); tc.want.old != "" && got != tc.want.old {
				t.Errorf("%s holds %q, want %q", layout.Old, got, tc.want.old)
			}
			for _, f := range tc.want.files {
				if !w.exists(f) {
					t.Errorf("%s missing after the boot", f)
				}
			}
			for _, f := range tc.want.gone {
				if w.exists(f) {
					t.Errorf("%s present after the boot", f)
				}
			}
			for _, c := range tc.want.console {
				if !strings.Contains(con, c) {
					t.Errorf("console lacks %q", c)
				}
			}
			if len(srv.checkins) != tc.want.checkins {
				t.Errorf("server got %d check-ins, want %d", len(srv.checkins), tc.want.checkins)
			}
			if within := tc.want.within; within == 0 && took > 5*time.Second || within > 0 && took > within {
				t.Errorf("boot took %v", took)
			}
			f, _ := stage.LoadFailed(w.paths.Hostpart)
			if _, failed := f[digestOf(imgB)]; failed != tc.want.failed {
				t.Errorf("B in the failure memory = %v, want %v", failed, tc.want.failed)
			}
			if t.Failed() {
				t.Logf("console:\n%s", con)
			}
		})
	}
}

// A download cut by a server crash stays as hn-root-new.img.part; the
// next boot resumes it (with Range) and promotes it: the server sends
// the image's bytes once in all.
func TestRunResumesCutDownload(t *testing.T) {
	w := newWorld(t, map[string][]byte{layout.Current: imgA})
	srv := newImaged(t)
	w.sys.http = &httpgetClient
	srv.assign(srv.publish(t, "B", imgB, nil, false))
	srv.cutAt = imgSize / 3
	cmd := "hn.server=" + srv.URL
	if out := w.boot(cmd); out.Image != layout.Current || w.slot(layout.Current) != "A" || !w.exists(layout.NewPart) {
		t.Fatalf("cut boot: %+v, current %s, part %v\n%s", out, w.slot(layout.Current), w.exists(layout.NewPart), w.console())
	}
	if !strings.Contains(w.console(), "kept in hn-root-new.img.part") || len(srv.checkins) != 1 || srv.checkins[0].Staging == nil || srv.checkins[0].Staging.State != "failed" {
		t.Errorf("cut boot's log or check-in does not report the interruption: %+v\n%s", srv.checkins, w.console())
	}
	if out := w.boot(cmd); out.Image != layout.Current || w.slot(layout.Current) != "B" || w.exists(layout.NewPart) {
		t.Fatalf("next boot: %+v, current %s, part %v\n%s", out, w.slot(layout.Current), w.exists(layout.NewPart), w.console())
	}
	if srv.served != imgSize {
		t.Errorf("server sent %d bytes for a %d-byte image", srv.served, imgSize)
	}
	if !strings.Contains(w.console(), "resuming download") {
		t.Errorf("second boot did not resume:\n%s", w.console())
	}
	if c := srv.checkins[len(srv.checkins)-1]; c.Booted != digestOf(imgB) || c.Action != "promote" || c.Staging == nil || c.Staging.State != "staged" || c.Staging.Reused != imgSize/3 {
		t.Errorf("last check-in: booted %s action %s staging %+v", c.Booted, c.Action, c.Staging)
	}
}

// A fetched image is on trial like any staged one: never confirmed, it
// is reverted, remembered as failed, and not fetched again although the
// server still assigns it.
func TestRunFetchedImageOnTrial(t *testing.T) {
	w := newWorld(t, map[string][]byte{layout.Current: imgA})
	srv := newImaged(t)
	w.sys.http = &httpgetClient
	srv.assign(srv.publish(t, "B", imgB, nil, false))
	cmd := "hn.server=" + srv.URL + " hn.tries=2"
	w.boot(cmd)
	if w.slot(layout.Current) != "B" || strings.TrimSpace(w.read(layout.Trial)) != "1" {
		t.Fatalf("after the fetch: current %s, trial %q", w.slot(layout.Current), w.read(layout.Trial))
	}
	w.boot(cmd) // the last try
	w.boot(cmd) // reverts
	if w.slot(layout.Current) != "A" || w.slot(layout.Broken) != "B" {
		t.Fatalf("after the tries: current %s, broken %s\n%s", w.slot(layout.Current), w.slot(layout.Broken), w.console())
	}
	f, _ := stage.LoadFailed(w.paths.Hostpart)
	if _, ok := f[digestOf(imgB)]; !ok {
		t.Fatalf("the reverted B is not in the failure memory: %v", f)
	}
	served := srv.served
	w.boot(cmd)
	if w.slot(layout.Current) != "A" || srv.served != served || !strings.Contains(w.console(), "remembered as failed") {
		t.Errorf("the boot after the revert: current %s, %d more bytes served\n%s", w.slot(layout.Current), srv.served-served, w.console())
	}
	if c := srv.checkins[len(srv.checkins)-1]; len(c.FailedDigests) != 1 || c.FailedDigests[0] != digestOf(imgB) || c.Staging == nil || c.Staging.State != "refused" {
		t.Errorf("last check-in: failed %v, staging %+v; want B failed and refused", c.FailedDigests, c.Staging)
	}
}

func trustKey(t *testing.T, w *world, k *manifest.PrivateKey) {
	t.Helper()
	p := filepath.Join(w.paths.Initramfs, layout.TrustedKeyInitramfs)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, k.Public().Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeImaged) assign(a AssignedImage) AssignedImage {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.assigned = &Assigned{MAC: fakeMAC, Hostname: "web-07", Image: a, Source: "test"}
	return a
}
