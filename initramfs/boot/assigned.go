package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"

	"github.com/hnboot/hnboot/internal/digest"
)

// Assigned is what imaged says a MAC should run: its answer to GET
// /api/hosts/{mac}/desired (fleet.DesiredHost; a test holds the two to
// the same JSON). The init does not import the fleet package: it would
// bring the server's dependencies into every initramfs.
type Assigned struct {
	MAC      string        `json:"mac"`
	Hostname string        `json:"hostname"`
	Image    AssignedImage `json:"image"`
	Source   string        `json:"source"` // why this image, in the server's words
	Revert   string        `json:"revert,omitempty"`
	Force    bool          `json:"force,omitempty"`
	// FailedDigests are digests the server knows failed on this host.
	FailedDigests []string `json:"failed_digests,omitempty"`
	// Raw is the whole answer, with the host configuration (hostconfig)
	// that the identity step is to apply.
	Raw json.RawMessage `json:"-"`
}

// AssignedImage is the image of an Assigned.
type AssignedImage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Digest  string `json:"digest"`
	Size    int64  `json:"size,omitempty"`
}

// Label is "name version (sha256:short)", or the short digest.
func (a AssignedImage) Label() string {
	if a.Name != "" {
		return strings.TrimSpace(a.Name+" "+a.Version) + " (sha256:" + digest.Short(a.Digest) + ")"
	}
	return "sha256:" + digest.Short(a.Digest)
}

// ErrUnknownHost is the server's 404 for a MAC it does not know.
var ErrUnknownHost = errors.New("imaged does not know this MAC")

// AskAssigned asks server what mac should run.
func AskAssigned(ctx context.Context, h HTTP, server, mac string) (Assigned, error) {
	var a Assigned
	u := strings.TrimRight(server, "/") + "/api/hosts/" + url.PathEscape(mac) + "/desired"
	resp, err := h.Get(ctx, u, 0)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return a, fmt.Errorf("GET %s: %w", u, err)
	}
	switch resp.StatusCode {
	case 200:
	case 404:
		return a, fmt.Errorf("GET %s: %w (%s)", u, ErrUnknownHost, strings.TrimSpace(string(body)))
	default:
		return a, fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return a, fmt.Errorf("GET %s: %w", u, err)
	}
	a.Raw = body
	return a, nil
}

// BlobURL is where server serves the image with digest (and its manifest
// at BlobURL.json).
func BlobURL(server, digest string) string {
	return strings.TrimRight(server, "/") + "/blobs/" + digest
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
