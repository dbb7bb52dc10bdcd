package pxe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/layout"
)

// HTTPConfig is what the HTTP handlers need.
type HTTPConfig struct {
	Base         string // http://server:port, for URLs in scripts
	Cmdline      string // extra kernel arguments for every host
	AllowUnknown bool
}

// HTTPHandler serves the boot over HTTP:
//
//	GET  /boot/{mac}.ipxe            iPXE script for that host
//	GET  /images/{digest}/vmlinuz    kernel of the image, from its /boot
//	GET  /images/{digest}/initramfs  initramfs of the image
//	GET  /blobs/{digest}             the image file itself (Range, ETag)
//	GET  /blobs/{digest}.json        its manifest (IMAGE.json beside the image), 404 if none
//	GET  /blobs/{digest}.chunks      its chunk index (IMAGE.chunks, delta updates), 404 if none
//	GET  /ipxe/{file}                iPXE binaries (UEFI HTTP boot)
//	POST /checkin                    a host's check-in (checkin.Checkin JSON)
//	GET  /api/hosts/{mac}/desired    without a fleet (extra nil): StaticDesired
//
// Every request becomes an Event.
type HTTPHandler struct {
	cfg     HTTPConfig
	dir     Directory
	ext     *Extractor
	files   *FileRoot // may be nil
	rec     Recorder
	checkin CheckinHandler
	log     *slog.Logger
	mac     func(net.IP) net.HardwareAddr
	mux     *http.ServeMux
}

// NewHTTPHandler builds the handler; extra (may be nil) serves /api/ and
// /metrics (the fleet package).
func NewHTTPHandler(cfg HTTPConfig, dir Directory, ext *Extractor, files *FileRoot, rec Recorder, ch CheckinHandler, extra http.Handler, log *slog.Logger, mac func(net.IP) net.HardwareAddr) *HTTPHandler {
	if mac == nil {
		mac = func(net.IP) net.HardwareAddr { return nil }
	}
	if log == nil {
		log = slog.Default()
	}
	if rec == nil {
		rec = Recorders(nil)
	}
	h := &HTTPHandler{cfg: cfg, dir: dir, ext: ext, files: files, rec: rec, checkin: ch, log: log, mac: mac, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /boot/{file}", h.script)
	h.mux.HandleFunc("GET /images/{digest}/{file}", h.bootFile)
	h.mux.HandleFunc("GET /blobs/{digest}", h.blob)
	h.mux.HandleFunc("GET /ipxe/{file}", h.ipxe)
	h.mux.HandleFunc("POST /checkin", h.postCheckin)
	if extra != nil {
		h.mux.Handle("/api/", extra)
		h.mux.Handle("/metrics", extra)
	} else {
		// Without a fleet the directory still knows what each MAC boots:
		// the init asks here too, and fetches that image to its disk.
		h.mux.HandleFunc("GET /api/hosts/{mac}/desired", h.desired)
	}
	return h
}

// StaticDesired is GET /api/hosts/{mac}/desired of a server without a
// fleet (--image, --host): the fields of fleet.DesiredHost that a
// directory knows.
type StaticDesired struct {
	MAC      string `json:"mac"`
	Hostname string `json:"hostname"`
	Image    struct {
		ImageRef
		Size int64 `json:"size,omitempty"`
	} `json:"image"`
	Source string `json:"source"`
}

func (h *HTTPHandler) desired(w http.ResponseWriter, r *http.Request) {
	mac, err := ParseMAC(r.PathValue("mac"))
	if err != nil {
		fail(w, http.StatusBadRequest, "bad MAC "+strconv.Quote(r.PathValue("mac")))
		return
	}
	hb, known := h.dir.Lookup(mac)
	if (!known && !h.cfg.AllowUnknown) || hb.Image.Digest == "" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, "{\"error\": %q}\n", mac.String()+" is not served an image by this imaged")
		return
	}
	d := StaticDesired{MAC: mac.String(), Hostname: hb.Hostname, Source: "imaged serve --host/--image"}
	d.Image.ImageRef = hb.Image
	d.Image.Path = ""
	if fi, err := os.Stat(hb.Image.Path); err == nil {
		d.Image.Size = fi.Size()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(d)
}

// statusWriter remembers the status and size for the ledger.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
	mac    net.HardwareAddr
	note   string
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// ReadFrom keeps sendfile(2) for large bodies.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := io.Copy(w.ResponseWriter, r)
	w.n += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (h *HTTPHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	h.mux.ServeHTTP(sw, r)
	if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/metrics" {
		return // the fleet records its own
	}
	mac := sw.mac
	if mac == nil {
		mac = h.mac(remoteIP(r))
	}
	ev := Event{Time: start, MAC: mac, Kind: KindHTTP,
		Detail: fmt.Sprintf("%s %s %d %dB %v from %s", r.Method, r.URL.Path, sw.status, sw.n, time.Since(start).Round(time.Millisecond), r.RemoteAddr)}
	if sw.status >= 400 {
		ev.Err = sw.note
		if ev.Err == "" {
			ev.Err = http.StatusText(sw.status)
		}
	}
	h.rec.Record(ev)
}

func remoteIP(r *http.Request) net.IP {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return nil
	}
	return net.ParseIP(host)
}

func fail(w http.ResponseWriter, code int, note string) {
	if sw, ok := w.(*statusWriter); ok {
		sw.note = note
	}
	http.Error(w, note, code)
}

func (h *HTTPHandler) script(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	macs, ok := strings.CutSuffix(name, ".ipxe")
	mac, err := ParseMAC(macs)
	if !ok || err != nil {
		fail(w, http.StatusNotFound, "want /boot/<mac>.ipxe")
		return
	}
	if sw, ok := w.(*statusWriter); ok {
		sw.mac = mac
	}
	hb, known := h.dir.Lookup(mac)
	if !known && !h.cfg.AllowUnknown {
		fail(w, http.StatusNotFound, "unknown MAC "+mac.String())
		return
	}
	if hb.Image.Digest == "" {
		fail(w, http.StatusNotFound, "no image assigned to "+mac.String())
		return
	}
	hb.MAC = mac
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, Script(ScriptInput{Base: h.cfg.Base, Host: hb, Cmdline: h.cfg.Cmdline}))
}

// image finds a servable image by digest.
func (h *HTTPHandler) image(digest string) (ImageRef, bool) {
	if _, err := digestHex(digest); err != nil {
		return ImageRef{}, false
	}
	for _, im := range h.dir.Images() {
		if im.Digest == digest {
			return im, true
		}
	}
	return ImageRef{}, false
}

func (h *HTTPHandler) bootFile(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	if _, ok := bootFileNames[file]; !ok {
		fail(w, http.StatusNotFound, "want vmlinuz or initramfs")
		return
	}
	im, ok := h.image(r.PathValue("digest"))
	if !ok {
		fail(w, http.StatusNotFound, "no such image")
		return
	}
	p, err := h.ext.Path(im, file)
	if err != nil {
		h.log.Error("http: extract boot file", "image", im.Path, "file", file, "err", err)
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	h.serveFile(w, r, p, `"`+im.Digest+`/`+file+`"`)
}

func (h *HTTPHandler) blob(w http.ResponseWriter, r *http.Request) {
	digest, isManifest := strings.CutSuffix(r.PathValue("digest"), layout.ManifestSuffix)
	digest, isChunks := strings.CutSuffix(digest, layout.ChunksSuffix)
	digest, isPack := strings.CutSuffix(digest, layout.PackSuffix)
	im, ok := h.image(digest)
	if !ok {
		fail(w, http.StatusNotFound, "no such image")
		return
	}
	if isChunks != isPack && !isManifest {
		// The chunk index and the pack (delta updates): immutable like the
		// image, and trusted through the manifest's chunks digest, not
		// through us. The pack is fetched in ranges (serveOpen serves them).
		suffix, what, fix := layout.ChunksSuffix, "chunk index", "mkimage rootfs writes IMAGE.chunks beside the image; hosts download it whole"
		if isPack {
			suffix, what, fix = layout.PackSuffix, "chunk pack", "mkimage rootfs writes IMAGE.zst beside the image: put it beside this one; hosts fetch the chunks they lack uncompressed"
		}
		f, err := os.Open(im.Path + suffix)
		if errors.Is(err, os.ErrNotExist) {
			fail(w, http.StatusNotFound, "no "+what+" for "+im.Digest+" ("+fix+")")
			return
		}
		if err != nil {
			h.log.Error("http: open", "path", im.Path+suffix, "err", err)
			fail(w, http.StatusInternalServerError, "cannot open "+what)
			return
		}
		defer f.Close()
		h.serveOpen(w, r, f, `"`+im.Digest+suffix+`"`, "application/octet-stream")
		return
	}
	if !isManifest && !isChunks && !isPack {
		h.serveFile(w, r, im.Path, `"`+im.Digest+`"`)
		return
	}
	if isChunks || isPack {
		fail(w, http.StatusNotFound, "no such file")
		return
	}
	// The manifest of a digest never changes either: a new build has a
	// new digest. Its path comes from the directory, not the request.
	f, err := os.Open(im.Path + layout.ManifestSuffix)
	if errors.Is(err, os.ErrNotExist) {
		fail(w, http.StatusNotFound, "no manifest for "+im.Digest+" (publish IMAGE.json from mkimage rootfs beside the image)")
		return
	}
	if err != nil {
		h.log.Error("http: open", "path", im.Path+layout.ManifestSuffix, "err", err)
		fail(w, http.StatusInternalServerError, "cannot open manifest")
		return
	}
	defer f.Close()
	h.serveOpen(w, r, f, `"`+im.Digest+layout.ManifestSuffix+`"`, "application/json")
}

// serveFile serves an immutable file: ETag, Range, long-lived caching.
func (h *HTTPHandler) serveFile(w http.ResponseWriter, r *http.Request, path, etag string) {
	f, err := os.Open(path)
	if err != nil {
		h.log.Error("http: open", "path", path, "err", err)
		fail(w, http.StatusInternalServerError, "cannot open file")
		return
	}
	defer f.Close()
	h.serveOpen(w, r, f, etag, "application/octet-stream")
}

func (h *HTTPHandler) serveOpen(w http.ResponseWriter, r *http.Request, f *os.File, etag, ctype string) {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		fail(w, http.StatusInternalServerError, "not a regular file")
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("Content-Type", ctype)
	http.ServeContent(w, r, "", st.ModTime(), f)
}

func (h *HTTPHandler) ipxe(w http.ResponseWriter, r *http.Request) {
	if h.files == nil {
		fail(w, http.StatusNotFound, "no iPXE directory")
		return
	}
	rd, _, mod, err := h.files.Open(r.PathValue("file"))
	if err != nil {
		fail(w, http.StatusNotFound, "no such file")
		return
	}
	if c, ok := rd.(io.Closer); ok {
		defer c.Close()
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", mod, rd)
}

// postCheckin parses the check-in once, here at the edge, and hands the
// typed value on. A body without a MAC is attributed to the client's
// address in the ARP table (see checkin.ParseFor).
func (h *HTTPHandler) postCheckin(w http.ResponseWriter, r *http.Request) {
	transport := h.mac(remoteIP(r))
	c, err := checkin.ParseFor(r.Body, transport)
	if err != nil {
		mac := transport
		var ce *checkin.Error
		if errors.As(err, &ce) && ce.MAC != "" {
			mac, _ = net.ParseMAC(ce.MAC)
		}
		if sw, ok := w.(*statusWriter); ok {
			sw.mac = mac
		}
		h.rec.Record(Event{Time: time.Now(), MAC: mac, Kind: KindCheckin, Detail: "refused", Err: err.Error()})
		code := http.StatusBadRequest
		if errors.Is(err, checkin.ErrTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		fail(w, code, err.Error())
		return
	}
	mac, _ := net.ParseMAC(c.MAC)
	if sw, ok := w.(*statusWriter); ok {
		sw.mac = mac
	}
	h.rec.Record(Event{Time: time.Now(), MAC: mac, Kind: KindCheckin, Detail: CheckinSummary(c)})
	if h.checkin != nil {
		if err := h.checkin(c); err != nil {
			h.log.Error("check-in not stored", "mac", c.MAC, "err", err)
			code := http.StatusInternalServerError
			if errors.Is(err, ErrRetryLater) {
				w.Header().Set("Retry-After", "5")
				code = http.StatusServiceUnavailable
			}
			fail(w, code, "check-in not stored: "+err.Error())
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// CheckinSummary is a one-line account of a check-in for logs and the
// ledger.
func CheckinSummary(c *checkin.Checkin) string {
	d := c.Booted
	if d == "" {
		d = "unknown head=" + c.BootedImage.Head
	}
	s := fmt.Sprintf("source=%s booted=%s action=%s kernel=%s", c.Source, d, c.Action, c.Kernel)
	if c.Hostname != "" {
		s += " hostname=" + c.Hostname
	}
	if c.RevertApplied != "" {
		s += " revert_applied=" + c.RevertApplied
	}
	if len(c.Fingerprints) > 0 {
		s += " ssh=" + c.Fingerprints[0]
	}
	return oneLine(s)
}
