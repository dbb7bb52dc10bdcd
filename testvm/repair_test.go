package testvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/layout"
)

// TestRepairGenkernelHalfMove: the original genkernel linuxrc promotes with
// `mv hn-root.img hn-root-old.img; mv hn-root-new.img hn-root.img`. A power
// cut between the two leaves no hn-root.img, the previous current as
// hn-root-old.img (its manifest left behind as a stale hn-root.img.json,
// and the previous old's manifest beside it), and the staged image. The
// init must finish the promotion: boot the staged image on trial from
// hn-root.img, keep the previous current as old, and leave only manifests
// that describe their images. Also with a power cut in the middle of that
// repair (hn.crashtest=3: after the journal, the stale manifest's removal
// and the image's rename), and a boot after it.
func TestRepairGenkernelHalfMove(t *testing.T) {
	for _, cut := range []int{0, 3} {
		t.Run(fmt.Sprintf("cut_after_op_%d", cut), func(t *testing.T) {
			d := disk(t, map[string]string{"root": "A", "new": "B", "old": "C"})
			err := WithHostpart(d, func(dir string) error {
				return os.Rename(filepath.Join(dir, layout.Current), filepath.Join(dir, layout.Old)) // genkernel's first mv
			})
			if err != nil {
				t.Fatal(err)
			}
			if cut > 0 {
				f := fixture(t)
				vm, err := Start(context.Background(), Options{
					Kernel: f.Kernel, Initrd: f.Initramfs, Disk: d, MAC: testMAC,
					Append: fmt.Sprintf("hn.hostpart=LABEL=hostpart hn.crashtest=%d", cut),
				})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := vm.Expect(`crashtest: power cut simulated`, bootTimeout); err != nil {
					vm.Kill()
					t.Fatal(err)
				}
				vm.Kill()
			}
			con := boot(t, d, "")
			for _, l := range strings.Split(con, "\n") {
				if strings.Contains(l, "hninit:") && (strings.Contains(l, "rotate:") || strings.Contains(l, "rotation done")) {
					t.Log(strings.TrimSpace(l))
				}
			}
			if got := field(t, con, "booted image"); got != "B" {
				t.Errorf("booted image = %q, want B (the promotion genkernel began)", got)
			}
			if got := field(t, con, "trial"); got != "2" {
				t.Errorf("tries left during the first boot of B = %q, want 2 (on trial, as after any promotion)", got)
			}
			if cut == 0 {
				wantConsole(t, con, "hn-root.img is missing: hn-root-new.img becomes hn-root.img", "action=repair")
			} else {
				wantConsole(t, con, "finishing an interrupted repair")
			}
			wantConsole(t, con, "hn-root-old.img.json does not describe hn-root-old.img")
			st := inspect(t, d)
			wantSlots(t, st, map[string]string{layout.Current: "B", layout.Old: "A"})
			// Manifests: hn-root.img's is B's own; the stale ones are gone.
			bm, err := os.ReadFile(layout.ManifestFor(images["B"]))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]byte{layout.ManifestFor(layout.Current): bm}
			got := map[string][]byte{}
			err = WithHostpart(d, func(dir string) error {
				for _, img := range []string{layout.Current, layout.New, layout.Old, layout.Broken, layout.Rejected} {
					if b, err := os.ReadFile(filepath.Join(dir, layout.ManifestFor(img))); err == nil {
						got[layout.ManifestFor(img)] = b
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for name, b := range got {
				if !bytes.Equal(b, want[name]) {
					t.Errorf("%s after the boot = %s, want %s", name, b, want[name])
				}
			}
			if len(got[layout.ManifestFor(layout.Current)]) == 0 {
				t.Errorf("%s missing after the boot, want B's manifest", layout.ManifestFor(layout.Current))
			}
		})
	}
}
