package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
)

func mkimage(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	if code := run(args, nil, &out, &out); code != 0 {
		return out.String(), fmt.Errorf("exit status %d: %s", code, out.String())
	}
	return out.String(), nil
}

func TestRootfsManifestSignVerify(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "tree")
	for p, body := range map[string]string{"etc/os-release": "ID=test\n", "etc/hostname": "builder\n", "etc/machine-id": "0123\n"} {
		os.MkdirAll(filepath.Join(tree, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(tree, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	key := filepath.Join(tmp, "fleet.key")
	if out, err := mkimage(t, "keygen", "--out", key); err != nil {
		t.Fatalf("mkimage keygen: %v\n%s", err, out)
	}
	if out, err := mkimage(t, "keygen", "--out", key); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("mkimage keygen over an existing key = %v, %s; want an error saying it exists", err, out)
	}
	for _, fs := range []string{"ext4", "squashfs"} {
		t.Run(fs, func(t *testing.T) {
			var images, manifests [][]byte
			for i := 0; i < 2; i++ {
				img := filepath.Join(tmp, fs+string(rune('a'+i))+".img")
				out, err := mkimage(t, "rootfs", "--from", tree, "--out", img, "--fs", fs, "--name", "web", "--version", "1.0", "--sign-key", key)
				if err != nil {
					t.Fatalf("mkimage rootfs: %v\n%s", err, out)
				}
				for _, want := range []string{"generalized: removed /etc/hostname", "generalized: emptied /etc/machine-id", "signed by key"} {
					if !strings.Contains(out, want) {
						t.Errorf("mkimage rootfs output lacks %q:\n%s", want, out)
					}
				}
				b, _ := os.ReadFile(img)
				m, _ := os.ReadFile(img + ".json")
				images, manifests = append(images, b), append(manifests, m)
				if out, err := mkimage(t, "verify", "--key", key+".pub", img); err != nil || !strings.Contains(out, "OK") {
					t.Errorf("mkimage verify %s = %v\n%s", img, err, out)
				}
			}
			if !bytes.Equal(images[0], images[1]) || !bytes.Equal(manifests[0], manifests[1]) {
				t.Errorf("two builds with SOURCE_DATE_EPOCH differ (image equal %v, manifest equal %v)", bytes.Equal(images[0], images[1]), bytes.Equal(manifests[0], manifests[1]))
			}
			for _, want := range []string{`"name": "web"`, `"version": "1.0"`, `"fs": "` + fs + `"`, `"build_time": "2023-11-14T22:13:20Z"`, `"signature": "`} {
				if !strings.Contains(string(manifests[0]), want) {
					t.Errorf("manifest lacks %s:\n%s", want, manifests[0])
				}
			}
			// Tampering is caught, with exit status 1 and the reason.
			img := filepath.Join(tmp, fs+"a.img")
			bad := append([]byte(nil), images[0]...)
			bad[len(bad)/2] ^= 0xff
			if err := os.WriteFile(img, bad, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := mkimage(t, "verify", "--key", key+".pub", img)
			if err == nil || !strings.HasPrefix(err.Error(), "exit status 1:") || !strings.Contains(err.Error(), "sha256 does not match") {
				t.Errorf("mkimage verify (tampered image) = %v, %s; want exit 1 and a sha256 mismatch", err, out)
			}
		})
	}
}

func TestProgressLine(t *testing.T) {
	for _, tt := range []struct {
		done, total int64
		width       int
		want        string
	}{
		{0, 100, 30, "[          ]   0% img"},
		{50, 100, 30, "[=====     ]  50% img"},
		{200, 100, 30, "[==========] 100% img"},
		{1, 0, 30, "[          ]   0% img"},
		{5, 10, 12, "  50% img"},
	} {
		if got := progressLine("img", tt.done, tt.total, tt.width-9); got != tt.want {
			t.Errorf("progressLine(img, %d, %d, %d) = %q, want %q", tt.done, tt.total, tt.width-9, got, tt.want)
		}
	}
	// Not a terminal: nothing is drawn.
	var b bytes.Buffer
	p := newProgress(&b, "img")
	p.update(1, 2)
	p.done()
	if b.Len() != 0 {
		t.Errorf("progress on a non-terminal wrote %q, want nothing", b.String())
	}
}

// mkimage rootfs writes the pack beside the image (IMAGE.zst): zstd -d
// of it is the image byte for byte, and the manifest names a version 2
// index that locates its frames.
func TestRootfsWritesPack(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	tmp := t.TempDir()
	tree := filepath.Join(tmp, "tree")
	for p, body := range map[string]string{"etc/os-release": "ID=test\n", "usr/share/doc/a/changelog": strings.Repeat("a line of a changelog\n", 20000)} {
		os.MkdirAll(filepath.Join(tree, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(tree, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(tmp, "a.img")
	out, err := mkimage(t, "rootfs", "--from", tree, "--out", img, "--fs", "ext4", "--name", "web", "--version", "1")
	if err != nil {
		t.Fatalf("mkimage rootfs: %v\n%s", err, out)
	}
	if !strings.Contains(out, img+layout.PackSuffix+": the chunks as zstd frames") {
		t.Errorf("mkimage rootfs does not say it wrote the pack:\n%s", out)
	}
	image, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	pack, err := os.ReadFile(img + layout.PackSuffix)
	if err != nil {
		t.Fatal(err)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	if got, err := dec.DecodeAll(pack, nil); err != nil || !bytes.Equal(got, image) {
		t.Fatalf("the pack decompresses to %d bytes (%v), want the image's %d", len(got), err, len(image))
	}
	if len(pack) >= len(image)/2 {
		t.Errorf("pack %d bytes for a %d-byte image of mostly free space and text", len(pack), len(image))
	}
	if _, err := exec.LookPath("zstd"); err == nil {
		dst := filepath.Join(tmp, "out.img")
		if b, err := exec.Command("zstd", "-q", "-d", img+layout.PackSuffix, "-o", dst).CombinedOutput(); err != nil {
			t.Fatalf("zstd -d: %v: %s", err, b)
		}
		if got, _ := os.ReadFile(dst); !bytes.Equal(got, image) {
			t.Fatal("zstd -d of the pack differs from the image")
		}
	}
	m, err := manifest.ReadFile(img + layout.ManifestSuffix)
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := os.ReadFile(img + layout.ChunksSuffix)
	ix, err := chunkindex.Parse(ib)
	if err != nil || chunkindex.Sum(ib) != m.Chunks || !ix.Packed || ix.PackSize != int64(len(pack)) {
		t.Fatalf("index %v (packed %v), manifest names %s, index is %s; want a version 2 index of the %d-byte pack", err, ix != nil && ix.Packed, m.Chunks, chunkindex.Sum(ib), len(pack))
	}
}
