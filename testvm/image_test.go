package testvm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// signedFixture is built once per run, lazily: a key pair, an initramfs
// that trusts the public key (mkimage initramfs --trust), and image B
// rebuilt with --sign-key (same tree and SOURCE_DATE_EPOCH, so the same
// bytes as images["B"], now with a signed manifest).
type signedFixture struct {
	initramfs string
	signedB   string // image; its manifest is signedB + ".json"
	unsigned  string // images["B"]'s own (unsigned) manifest
}

var (
	signedOnce sync.Once
	signedFx   signedFixture
	signedErr  error
)

func trustFixture(t *testing.T) signedFixture {
	t.Helper()
	f := fixture(t)
	signedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		dir := filepath.Join(f.Dir, "signed")
		if signedErr = os.MkdirAll(dir, 0o755); signedErr != nil {
			return
		}
		key := filepath.Join(dir, "fleet.key")
		signedFx = signedFixture{
			initramfs: filepath.Join(dir, "initramfs-trusted.cpio.zst"),
			signedB:   filepath.Join(dir, "B-signed.img"),
			unsigned:  images["B"] + ".json",
		}
		for _, args := range [][]string{
			{"keygen", "--out", key},
			{"initramfs", "--kernel-modules", f.ModDir, "--init", f.Init, "--out", signedFx.initramfs, "--trust", key + ".pub"},
			{"rootfs", "--from", filepath.Join(f.Dir, "tree-B"), "--out", signedFx.signedB, "--sign-key", key},
		} {
			if signedErr = f.Run(ctx, args...); signedErr != nil {
				return
			}
		}
	})
	if signedErr != nil {
		t.Fatalf("building the signed-image fixture: %v", signedErr)
	}
	return signedFx
}

// stage replaces what is staged on hostpart: image and manifest (a ""
// manifest stages none), and clears an earlier rejection.
func stage(t *testing.T, diskPath, image, manifest string) {
	t.Helper()
	err := WithHostpart(diskPath, func(dir string) error {
		for _, n := range []string{"hn-root-new.img", "hn-root-new.img.json", "hn-root-new.img.rejected", "hn-root-new.img.rejected.json"} {
			os.Remove(filepath.Join(dir, n))
		}
		copyFile := func(src, dst string) error {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, dst), b, 0o644)
		}
		if manifest != "" {
			if err := copyFile(manifest, "hn-root-new.img.json"); err != nil {
				return err
			}
		}
		return copyFile(image, "hn-root-new.img")
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSignedImageRequired boots an initramfs built with --trust: a staged
// image without a manifest, or with an unsigned one, is rejected and the
// current image boots; the same image with a signed manifest is promoted,
// and its manifest moves with it to hn-root.img.json.
func TestSignedImageRequired(t *testing.T) {
	sf := trustFixture(t)
	d := disk(t, map[string]string{"root": "A"})
	for _, tc := range []struct {
		name, image, manifest string
		wantBoot, wantMsg     string
	}{
		{"no manifest", images["B"], "", "A", "has no manifest"},
		{"unsigned manifest", images["B"], sf.unsigned, "A", "not signed"},
		{"signed manifest", sf.signedB, sf.signedB + ".json", "B", "signature valid"},
	} {
		stage(t, d, tc.image, tc.manifest)
		con := bootWith(t, sf.initramfs, d, "")
		if got := field(t, con, "booted image"); got != tc.wantBoot {
			t.Errorf("%s: booted image = %q, want %s", tc.name, got, tc.wantBoot)
		}
		wantConsole(t, con, "staged images must be signed", tc.wantMsg)
		st := inspect(t, d)
		if tc.wantBoot == "A" {
			if st.Slots["hn-root-new.img.rejected"] != "B" || st.Slots["hn-root.img"] != "A" {
				t.Errorf("%s: slots %v, want B rejected and A current", tc.name, st.Slots)
			}
			continue
		}
		wantSlots(t, st, map[string]string{"hn-root.img": "B", "hn-root-old.img": "A"})
		var moved []byte
		err := WithHostpart(d, func(dir string) error {
			var err error
			moved, err = os.ReadFile(filepath.Join(dir, "hn-root.img.json"))
			return err
		})
		if err != nil || !strings.Contains(string(moved), `"signature"`) {
			t.Errorf("%s: hostpart hn-root.img.json = %q, %v; want the signed manifest moved beside the promoted image", tc.name, moved, err)
		}
	}
}
