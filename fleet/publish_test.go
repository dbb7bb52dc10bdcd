package fleet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hnboot/hnboot/internal/chunkindex"
	"github.com/hnboot/hnboot/internal/chunkpack"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/rootfs"
)

// testImage builds a small real ext4 root image (what the server's
// filesystem check wants) and its manifest.
func testImage(t *testing.T, name, version, motd string, key *manifest.PrivateKey) (img string, mb []byte) {
	t.Helper()
	return testImageIndex(t, name, version, motd, key, chunkpack.WriteFile)
}

// testImageIndex is testImage with the index written by write: a
// version 2 index and its pack (chunkpack.WriteFile, as mkimage rootfs),
// or a version 1 index alone (chunkindex.WriteFile, as before packs).
func testImageIndex(t *testing.T, name, version, motd string, key *manifest.PrivateKey, write func(string) (*chunkindex.Index, string, error)) (img string, mb []byte) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	writeFile(t, filepath.Join(src, "etc", "motd"), motd)
	img = filepath.Join(dir, name+"-"+version+".img")
	if _, err := rootfs.Build(context.Background(), rootfs.Options{From: src, Out: img, Size: 4 << 20, Epoch: 1700000000, HasEpoch: true, Boot: rootfs.BootOptions{Disabled: true}}); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.New(img, manifest.Fields{Name: name, Version: version, FS: "ext4", BuildTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	// As mkimage rootfs: the chunk index beside the image, named in the
	// manifest.
	if _, m.Chunks, err = write(img); err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if err := m.Sign(key); err != nil {
			t.Fatal(err)
		}
	}
	return img, m.Marshal()
}

// patch sends b as the bytes of an upload from offset.
func (e *env) patch(t *testing.T, path, token string, offset int64, b []byte) (int, PublishReply, string) {
	t.Helper()
	req, _ := http.NewRequest("PATCH", e.srv.URL+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Upload-Offset", strconv.FormatInt(offset, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var rep PublishReply
	json.Unmarshal(body, &rep)
	return resp.StatusCode, rep, string(body)
}

func (e *env) startUpload(t *testing.T, token string, mb []byte) (int, PublishReply, string) {
	t.Helper()
	code, body := e.call(t, "POST", "/api/images", token, json.RawMessage(mb))
	var rep PublishReply
	json.Unmarshal(body, &rep)
	return code, rep, string(body)
}

func TestPublishResumeAndRegister(t *testing.T) {
	images := t.TempDir()
	e := newEnvDB(t, false, "", func(o *Options) { o.Images = images })
	img, mb := testImage(t, "web", "9", "nine\n", nil)
	data, _ := os.ReadFile(img)
	half := int64(len(data) / 2)

	code, rep, body := e.startUpload(t, aliceToken, mb)
	if code != http.StatusOK || rep.Result != "upload" || rep.Offset != 0 || rep.Upload == "" {
		t.Fatalf("POST /api/images = %d %s, want 200 and an upload from 0", code, body)
	}
	// The first half, then the connection "breaks".
	if code, rep, body = e.patch(t, rep.Upload, aliceToken, 0, data[:half]); code != http.StatusOK || rep.Result != "partial" || rep.Offset != half {
		t.Fatalf("PATCH first half = %d %s, want 200 partial at %d", code, body, half)
	}
	// Publishing again resumes where the server stopped.
	if code, rep, body = e.startUpload(t, aliceToken, mb); code != http.StatusOK || rep.Offset != half {
		t.Fatalf("POST /api/images again = %d %s, want the offset %d", code, body, half)
	}
	if code, rep, body = e.patch(t, rep.Upload, aliceToken, 0, data); code != http.StatusConflict || !strings.Contains(body, "send from "+strconv.FormatInt(half, 10)) {
		t.Errorf("PATCH from a wrong offset = %d %s, want 409 naming the server's offset", code, body)
	}
	if code, rep, body = e.patch(t, "/api/uploads/sha256:"+mustManifest(t, mb).SHA256, aliceToken, half, data[half:]); code != http.StatusCreated || rep.Result != "published" || rep.Image != "web@9" {
		t.Fatalf("PATCH the rest = %d %s, want 201 published web@9", code, body)
	}
	// Registered: assign can name it, GET /api/images lists it, the blob
	// is content-addressed.
	if code, body := e.call(t, "POST", "/api/assign", aliceToken, map[string]string{"host": "web-01", "image": "web@9"}); code != http.StatusOK {
		t.Errorf("assign web@9 after publishing = %d %s", code, body)
	}
	code, b := e.call(t, "GET", "/api/images", aliceToken, nil)
	var list []ImageListing
	json.Unmarshal(b, &list)
	var got *ImageListing
	for i := range list {
		if list[i].Image == "web@9" {
			got = &list[i]
		}
	}
	if code != http.StatusOK || got == nil || !got.Published || got.Size != int64(len(data)) || got.Assigned != 1 || got.Source != "published" {
		t.Errorf("GET /api/images = %d %s; want web@9 published, %d bytes, assigned to 1 host", code, b, len(data))
	}
	blob := filepath.Join(images, "blobs", "sha256-"+strings.TrimPrefix(rep.Digest, "sha256:")+".img")
	if b, err := os.ReadFile(blob); err != nil || !bytes.Equal(b, data) {
		t.Errorf("blob %s: %v, want the image's bytes", blob, err)
	}
	if _, err := os.Stat(blob + ".json"); err != nil {
		t.Errorf("the blob's manifest: %v", err)
	}
	// The server made the chunk index the manifest names (delta updates).
	if b, err := os.ReadFile(blob + layout.ChunksSuffix); err != nil || chunkindex.Sum(b) != mustManifest(t, mb).Chunks {
		t.Errorf("the blob's chunk index: %v, want the one the manifest names (%s)", err, mustManifest(t, mb).Chunks)
	}
	// And the pack the index locates frames in, the same as mkimage's.
	if b, err := os.ReadFile(blob + layout.PackSuffix); err != nil {
		t.Errorf("the blob's pack: %v", err)
	} else if want, _ := os.ReadFile(img + layout.PackSuffix); !bytes.Equal(b, want) {
		t.Errorf("the blob's pack (%d bytes) differs from mkimage's (%d)", len(b), len(want))
	}
	if img := e.f.Desired().Image("web@9"); img == nil || img.Path != blob {
		t.Errorf("Desired().Image(web@9) = %+v, want the blob", img)
	}
	// The same again: nothing to send. Another digest under the same
	// name@version: refused.
	if code, rep, body = e.startUpload(t, aliceToken, mb); code != http.StatusOK || rep.Result != "exists" {
		t.Errorf("publishing it again = %d %s, want exists", code, body)
	}
	_, mb2 := testImage(t, "web", "9", "other\n", nil)
	if code, _, body = e.startUpload(t, aliceToken, mb2); code != http.StatusConflict || !strings.Contains(body, "web@9 exists with digest") {
		t.Errorf("web@9 with another digest = %d %s, want 409", code, body)
	}
	// The YAML's images are refused the same way.
	_, mb3 := testImage(t, "base", "1.2", "not base 1.2\n", nil)
	if code, _, body = e.startUpload(t, aliceToken, mb3); code != http.StatusConflict {
		t.Errorf("base@1.2 (declared in the YAML) with another digest = %d %s, want 409", code, body)
	}
	// The audit log has it.
	_, b = e.call(t, "GET", "/api/audit?action=publish", aliceToken, nil)
	if !strings.Contains(string(b), `"target": "web@9"`) || !strings.Contains(string(b), `"who": "alice"`) {
		t.Errorf("audit of the publish: %s", b)
	}
	// A restart finds it (the directory is the registry).
	e.srv.Close()
	e.f.Close()
	e.open(t, false)
	if e.f.Desired().Image("web@9") == nil {
		t.Errorf("after a restart web@9 is not known")
	}
}

func TestPublishRefusals(t *testing.T) {
	images := t.TempDir()
	key, _ := manifest.GenerateKey(rand.Reader)
	other, _ := manifest.GenerateKey(rand.Reader)
	e := newEnvDB(t, false, "", func(o *Options) { o.Images = images; o.TrustedKeys = []manifest.PublicKey{key.Public()} })
	img, signed := testImage(t, "web", "10", "ten\n", key)
	_, unsigned := testImage(t, "web", "11", "eleven\n", nil)
	_, wrongKey := testImage(t, "web", "12", "twelve\n", other)
	data, _ := os.ReadFile(img)

	for _, tt := range []struct {
		name  string
		token string
		body  []byte
		code  int
		want  string
	}{
		{"no token", "", signed, http.StatusUnauthorized, ""},
		{"unsigned", aliceToken, unsigned, http.StatusForbidden, "not signed"},
		{"signed by another key", aliceToken, wrongKey, http.StatusForbidden, "not trusted"},
		{"not a manifest", aliceToken, []byte(`{"format": "nope"}`), http.StatusBadRequest, "manifest"},
		{"a name with a slash", aliceToken, bytes.Replace(unsigned, []byte(`"name": "web"`), []byte(`"name": "../../etc"`), 1), http.StatusBadRequest, "letters, digits"},
	} {
		code, _, body := e.startUpload(t, tt.token, tt.body)
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("%s: POST /api/images = %d %s, want %d and %q", tt.name, code, body, tt.code, tt.want)
		}
	}
	// Bytes that do not match the manifest: refused, nothing registered.
	code, rep, body := e.startUpload(t, aliceToken, signed)
	if code != http.StatusOK {
		t.Fatalf("POST signed = %d %s", code, body)
	}
	bad := append([]byte(nil), data...)
	bad[len(bad)-1] ^= 0xff
	if code, _, body = e.patch(t, rep.Upload, aliceToken, 0, bad); code != http.StatusUnprocessableEntity || !strings.Contains(body, "nothing registered") {
		t.Errorf("PATCH of corrupted bytes = %d %s, want 422", code, body)
	}
	if e.f.Desired().Image("web@10") != nil {
		t.Errorf("a corrupted upload was registered")
	}
	if code, _, body = e.patch(t, rep.Upload, aliceToken, 0, data); code != http.StatusNotFound {
		t.Errorf("PATCH after the refusal = %d %s, want 404 (start again)", code, body)
	}
	// More bytes than the manifest says.
	code, rep, _ = e.startUpload(t, aliceToken, signed)
	if code, _, body = e.patch(t, rep.Upload, aliceToken, 0, append(append([]byte(nil), data...), 0)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("PATCH of too many bytes = %d %s, want 413", code, body)
	}
	if code, _, body = e.patch(t, "/api/uploads/sha256:"+strings.Repeat("ab", 32), aliceToken, 0, data); code != http.StatusNotFound {
		t.Errorf("PATCH without a POST = %d %s, want 404", code, body)
	}
	if code, _, body = e.patch(t, "/api/uploads/..%2f..%2fetc", aliceToken, 0, data); code != http.StatusBadRequest {
		t.Errorf("PATCH of a traversal digest = %d %s, want 400", code, body)
	}
	// Publishing off.
	e2 := newEnv(t, false)
	if code, _, body = e2.startUpload(t, aliceToken, signed); code != http.StatusForbidden || !strings.Contains(body, "--images") {
		t.Errorf("publish without an images directory = %d %s, want 403 naming --images", code, body)
	}
}

func TestPrune(t *testing.T) {
	images := t.TempDir()
	e := newEnvDB(t, false, "", func(o *Options) { o.Images = images })
	publish := func(version, motd string) string {
		img, mb := testImage(t, "app", version, motd, nil)
		data, _ := os.ReadFile(img)
		_, rep, _ := e.startUpload(t, aliceToken, mb)
		if code, rep2, body := e.patch(t, rep.Upload, aliceToken, 0, data); code != http.StatusCreated {
			t.Fatalf("publish app@%s = %d %s", version, code, body)
		} else {
			return rep2.Digest
		}
		return ""
	}
	publish("1", "one\n")
	d2 := publish("2", "two\n")
	publish("3", "three\n")
	if code, body := e.call(t, "POST", "/api/assign", aliceToken, map[string]string{"host": "web-02", "image": "app@2"}); code != http.StatusOK {
		t.Fatalf("assign = %d %s", code, body)
	}
	// A host that keeps app@3 as its old image.
	c := mustParse(t, `{"mac": "52:54:00:00:00:03", "images": {"current": "`+d2+`", "old": "`+e.f.Desired().Image("app@3").Digest+`"}}`)
	if err := e.f.Checkin(c); err != nil {
		t.Fatal(err)
	}
	prune := func(apply bool) map[string]PruneResult {
		code, b := e.call(t, "POST", "/api/prune", aliceToken, map[string]bool{"apply": apply})
		if code != http.StatusOK {
			t.Fatalf("prune = %d %s", code, b)
		}
		var res []PruneResult
		json.Unmarshal(b, &res)
		m := map[string]PruneResult{}
		for _, r := range res {
			m[r.Image] = r
		}
		return m
	}
	dry := prune(false)
	if dry["app@1"].Kept != "" || dry["app@1"].Removed || !strings.Contains(dry["app@2"].Kept, "run it") || !strings.Contains(dry["app@3"].Kept, "keep it") {
		t.Errorf("dry run = %+v; want app@1 to go, app@2 (running) and app@3 (old slot) kept", dry)
	}
	if _, ok := dry["base@1.2"]; ok {
		t.Errorf("dry run lists base@1.2, a YAML image")
	}
	if e.f.Desired().Image("app@1") == nil {
		t.Errorf("the dry run removed app@1")
	}
	res := prune(true)
	if !res["app@1"].Removed || res["app@2"].Removed || res["app@3"].Removed {
		t.Errorf("prune --apply = %+v; want only app@1 removed", res)
	}
	if e.f.Desired().Image("app@1") != nil {
		t.Errorf("app@1 still known after prune")
	}
	blob := filepath.Join(images, "blobs", "sha256-"+strings.TrimPrefix(res["app@1"].Digest, "sha256:")+".img")
	for _, p := range []string{blob, blob + layout.ChunksSuffix, blob + layout.PackSuffix} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("app@1's %s: %v, want it removed", filepath.Base(p), err)
		}
	}
}

// An image whose manifest names a version 1 index (built before packs)
// is published with that index and no pack: hosts fetch raw ranges.
func TestPublishVersion1Index(t *testing.T) {
	images := t.TempDir()
	e := newEnvDB(t, false, "", func(o *Options) { o.Images = images })
	img, mb := testImageIndex(t, "old", "1", "old\n", nil, chunkindex.WriteFile)
	data, _ := os.ReadFile(img)
	_, rep, _ := e.startUpload(t, aliceToken, mb)
	code, rep, body := e.patch(t, rep.Upload, aliceToken, 0, data)
	if code != http.StatusCreated {
		t.Fatalf("publish = %d %s", code, body)
	}
	blob := filepath.Join(images, "blobs", "sha256-"+strings.TrimPrefix(rep.Digest, "sha256:")+".img")
	if b, err := os.ReadFile(blob + layout.ChunksSuffix); err != nil || chunkindex.Sum(b) != mustManifest(t, mb).Chunks {
		t.Errorf("the blob's chunk index: %v, want the version 1 index the manifest names", err)
	}
	if _, err := os.Stat(blob + layout.PackSuffix); !os.IsNotExist(err) {
		t.Errorf("a pack beside an image with a version 1 index: %v", err)
	}
}

func mustManifest(t *testing.T, b []byte) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
