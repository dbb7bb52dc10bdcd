package fleet

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/hnboot/hnboot/internal/digest"
	"gopkg.in/yaml.v3"
)

// Desired is the operator's fleet description, read from every *.yaml and
// *.yml file of one directory (not recursive). Any file may hold any of the
// top-level sections; entries are merged and must be unique across files.
//
//	images:   [{name, version, digest, path}]   referenced as "name@version"
//	channels: {stable: base@1.2, ...}
//	groups:   [{name, image | channel, labels, network, identity, files}]
//	hosts:    [{mac, hostname, group, image | channel, labels, network, identity, files}]
//	rollouts: [{name, image, group, hosts, percent}], or with waves (rolloutspec.go)
//
// A relative image path is taken relative to the directory.
type Desired struct {
	Dir      string
	Images   []*Image          // in file order
	Channels map[string]string // channel → image ref
	Groups   map[string]*Group
	Hosts    []*Host // in file order
	Rollouts []*Rollout

	imageByRef map[string]*Image
	hostByMAC  map[string]*Host // key: canonical MAC string
	hostByName map[string]*Host

	// imageWarnings are set by the digest check (declared images whose
	// file is missing); the snapshot shows them in status.
	imageWarnings []string
}

// Pos is where something was declared.
type Pos struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d", p.File, p.Line) }

// Image is one image of the fleet.
type Image struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Digest  string `json:"digest"`
	Path    string `json:"path"`
	Pos     Pos    `json:"-"`

	digestPos Pos  // the digest: line, named when the file does not match
	published bool // by imaged fleet publish, from the images directory
}

// Ref is how the YAML files and the API name an image: "name@version".
func (i *Image) Ref() string { return i.Name + "@" + i.Version }

// ImageRef converts to the boot server's type.
func (i *Image) ImageRef() ImageRef {
	return ImageRef{Name: i.Name, Version: i.Version, Digest: i.Digest, Path: i.Path}
}

// Group is a set of hosts sharing an image and defaults for their
// network, identity values and files.
type Group struct {
	Name     string            `json:"name"`
	Image    string            `json:"image,omitempty"`
	Channel  string            `json:"channel,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"` // its hosts' labels, under their own
	Network  Network           `json:"-"`
	Identity map[string]string `json:"-"`
	Files    []*FileSpec       `json:"-"`
	Pos      Pos               `json:"-"`
}

// Host is one machine, known by its MAC.
type Host struct {
	MAC      net.HardwareAddr  `json:"-"`
	Hostname string            `json:"hostname"`
	Group    string            `json:"group,omitempty"`
	Image    string            `json:"image,omitempty"`
	Channel  string            `json:"channel,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"` // over its group's; Desired.Labels merges them
	Network  Network           `json:"-"`
	Identity map[string]string `json:"-"` // an empty value removes the group's
	Files    []*FileSpec       `json:"-"`
	Pos      Pos               `json:"-"`
}

// Rollout is a staged assignment. Without Waves it is advanced by hand:
// the listed hosts, plus Percent percent of the group's hosts (chosen by
// a stable hash of rollout name and MAC), get Image; raise Percent, in
// git or through the API. With Waves it runs itself once started (see
// rolloutspec.go and package fleet/rollout).
type Rollout struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Group   string   `json:"group,omitempty"`
	Hosts   []string `json:"hosts,omitempty"` // hostnames or MACs
	Percent int      `json:"percent"`
	Pos     Pos      `json:"-"`
	Auto
}

// Image returns the image named by ref ("name@version"), or nil.
func (d *Desired) Image(ref string) *Image { return d.imageByRef[ref] }

// HostByMAC returns the host with that MAC, or nil.
func (d *Desired) HostByMAC(mac net.HardwareAddr) *Host { return d.hostByMAC[mac.String()] }

// FindHost accepts a hostname or a MAC.
func (d *Desired) FindHost(s string) *Host {
	if h := d.hostByName[s]; h != nil {
		return h
	}
	if mac, err := net.ParseMAC(s); err == nil {
		return d.hostByMAC[mac.String()]
	}
	return nil
}

// ResolveImage turns an image ref or a channel into an image.
func (d *Desired) resolve(image, channel string) *Image {
	if image != "" {
		return d.imageByRef[image]
	}
	if channel != "" {
		return d.imageByRef[d.Channels[channel]]
	}
	return nil
}

// HostImage is the image the YAML files assign to h (host, then group).
func (d *Desired) HostImage(h *Host) *Image {
	if img := d.resolve(h.Image, h.Channel); img != nil {
		return img
	}
	if g := d.Groups[h.Group]; g != nil {
		return d.resolve(g.Image, g.Channel)
	}
	return nil
}

// ValidationError lists every problem found in the directory, each naming
// file and line.
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string {
	return fmt.Sprintf("fleet configuration invalid (%d problems):\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Load reads and validates every *.yaml / *.yml file in dir.
func Load(dir string) (*Desired, error) { return LoadWith(dir, nil) }

// LoadWith is Load with more images than the YAML declares (the
// published ones), which the YAML may name like its own. A YAML image of
// the same name@version must have the same digest.
func LoadWith(dir string, extra []*Image) (*Desired, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	var files []string
	for _, e := range ents {
		n := e.Name()
		if e.Type().IsRegular() && !strings.HasPrefix(n, ".") && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			files = append(files, filepath.Join(dir, n))
		}
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("fleet: %s: no *.yaml files (expected images, groups and hosts)", dir)
	}
	l := &loader{d: &Desired{
		Dir:        dir,
		Channels:   map[string]string{},
		Groups:     map[string]*Group{},
		imageByRef: map[string]*Image{},
		hostByMAC:  map[string]*Host{},
		hostByName: map[string]*Host{},
	}, channelPos: map[string]Pos{}}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		l.file(f, b)
	}
	for _, img := range extra {
		if prev := l.d.imageByRef[img.Ref()]; prev != nil {
			if prev.Digest != img.Digest {
				l.errf(prev.digestPos, "image %s: digest %s, but it is published (%s) with %s", img.Ref(), prev.Digest, img.Pos.File, img.Digest)
			}
			continue
		}
		l.d.imageByRef[img.Ref()] = img
		l.d.Images = append(l.d.Images, img)
	}
	l.crossCheck()
	if len(l.problems) > 0 {
		return nil, &ValidationError{Problems: l.problems}
	}
	return l.d, nil
}

type loader struct {
	d          *Desired
	problems   []string
	channelPos map[string]Pos
}

func (l *loader) errf(p Pos, format string, args ...any) {
	l.problems = append(l.problems, p.String()+": "+fmt.Sprintf(format, args...))
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (l *loader) file(name string, b []byte) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		msg := err.Error()
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			l.problems = append(l.problems, name+":"+m[1]+": "+m[2])
		} else {
			l.problems = append(l.problems, name+": "+msg)
		}
		return
	}
	if len(doc.Content) == 0 {
		return // empty file
	}
	root := doc.Content[0]
	fields := l.mapping(name, root, "images", "channels", "groups", "hosts", "rollouts")
	if n := fields["images"]; n != nil {
		for _, it := range l.seq(name, n, "images") {
			l.image(name, it)
		}
	}
	if n := fields["channels"]; n != nil {
		if n.Kind != yaml.MappingNode {
			l.errf(Pos{name, n.Line}, "channels: want a mapping of channel name to image (name@version)")
		} else {
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := Pos{name, k.Line}
				if first, ok := l.channelPos[k.Value]; ok {
					l.errf(p, "duplicate channel %q (first at %s)", k.Value, first)
					continue
				}
				l.channelPos[k.Value] = p
				l.d.Channels[k.Value] = l.str(name, v, "channel "+k.Value)
			}
		}
	}
	if n := fields["groups"]; n != nil {
		for _, it := range l.seq(name, n, "groups") {
			l.group(name, it)
		}
	}
	if n := fields["hosts"]; n != nil {
		for _, it := range l.seq(name, n, "hosts") {
			l.host(name, it)
		}
	}
	if n := fields["rollouts"]; n != nil {
		for _, it := range l.seq(name, n, "rollouts") {
			l.rollout(name, it)
		}
	}
}

// mapping checks that n is a mapping with only the allowed keys and returns
// the value nodes by key.
func (l *loader) mapping(file string, n *yaml.Node, allowed ...string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n.Kind != yaml.MappingNode {
		l.errf(Pos{file, n.Line}, "want a mapping with keys %s", strings.Join(allowed, ", "))
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		ok := false
		for _, a := range allowed {
			ok = ok || a == k.Value
		}
		if !ok {
			l.errf(Pos{file, k.Line}, "unknown key %q (allowed: %s)", k.Value, strings.Join(allowed, ", "))
			continue
		}
		out[k.Value] = n.Content[i+1]
	}
	return out
}

func (l *loader) seq(file string, n *yaml.Node, what string) []*yaml.Node {
	if n.Kind != yaml.SequenceNode {
		l.errf(Pos{file, n.Line}, "%s: want a list", what)
		return nil
	}
	return n.Content
}

func (l *loader) str(file string, n *yaml.Node, what string) string {
	if n == nil {
		return ""
	}
	if n.Kind != yaml.ScalarNode {
		l.errf(Pos{file, n.Line}, "%s: want a string", what)
		return ""
	}
	return n.Value
}

func (l *loader) strs(file string, n *yaml.Node, what string) []string {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}
	}
	var out []string
	for _, it := range l.seq(file, n, what) {
		out = append(out, l.str(file, it, what))
	}
	return out
}

func (l *loader) image(file string, n *yaml.Node) {
	f := l.mapping(file, n, "name", "version", "digest", "path")
	p := Pos{file, n.Line}
	img := &Image{
		Name:    l.str(file, f["name"], "name"),
		Version: l.str(file, f["version"], "version"),
		Digest:  l.str(file, f["digest"], "digest"),
		Path:    l.str(file, f["path"], "path"),
		Pos:     p,
	}
	img.digestPos = p
	if dn := f["digest"]; dn != nil {
		img.digestPos.Line = dn.Line
	}
	if img.Name == "" || strings.ContainsAny(img.Name, "@ \t") {
		l.errf(p, "image: name missing or contains '@' or spaces")
		return
	}
	if img.Version == "" || strings.ContainsAny(img.Version, "@ \t") {
		l.errf(p, "image %s: version missing or contains '@' or spaces", img.Name)
		return
	}
	switch {
	case digest.Valid(img.Digest):
	case digest.Valid("sha256:" + img.Digest):
		// What mkimage prints and IMAGE.json's sha256 field hold.
		l.errf(img.digestPos, "image %s: digest %q lacks its prefix: write digest: sha256:%s", img.Ref(), img.Digest, img.Digest)
	case img.Digest == "":
		l.errf(img.digestPos, "image %s: digest missing: want sha256: and the 64 hex digits of the file's sha256 (mkimage rootfs prints it; or sha256sum FILE)", img.Ref())
	default:
		l.errf(img.digestPos, "image %s: bad digest %q: want sha256: and 64 lowercase hex digits", img.Ref(), img.Digest)
	}
	if img.Path == "" {
		l.errf(p, "image %s: path missing", img.Ref())
	} else if !filepath.IsAbs(img.Path) {
		img.Path = filepath.Join(l.d.Dir, img.Path)
	}
	if prev := l.d.imageByRef[img.Ref()]; prev != nil {
		l.errf(p, "duplicate image %s (first at %s)", img.Ref(), prev.Pos)
		return
	}
	l.d.imageByRef[img.Ref()] = img
	l.d.Images = append(l.d.Images, img)
}

func (l *loader) group(file string, n *yaml.Node) {
	f := l.mapping(file, n, "name", "image", "channel", "labels", "network", "identity", "files")
	g := &Group{
		Name:    l.str(file, f["name"], "name"),
		Image:   l.str(file, f["image"], "image"),
		Channel: l.str(file, f["channel"], "channel"),
		Pos:     Pos{file, n.Line},
	}
	if g.Name == "" {
		l.errf(g.Pos, "group: name missing")
		return
	}
	who := "group " + g.Name
	g.Labels = l.labels(file, f["labels"], who)
	g.Network = l.network(file, f["network"], who, true)
	g.Identity, _ = l.identity(file, f["identity"], who)
	g.Files = l.files(file, f["files"], who)
	if g.Image != "" && g.Channel != "" {
		l.errf(g.Pos, "group %s: set image or channel, not both", g.Name)
	}
	if prev := l.d.Groups[g.Name]; prev != nil {
		l.errf(g.Pos, "duplicate group %s (first at %s)", g.Name, prev.Pos)
		return
	}
	l.d.Groups[g.Name] = g
}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func (l *loader) host(file string, n *yaml.Node) {
	f := l.mapping(file, n, "mac", "hostname", "group", "image", "channel", "labels", "network", "identity", "files")
	p := Pos{file, n.Line}
	h := &Host{
		Hostname: l.str(file, f["hostname"], "hostname"),
		Group:    l.str(file, f["group"], "group"),
		Image:    l.str(file, f["image"], "image"),
		Channel:  l.str(file, f["channel"], "channel"),
		Pos:      p,
	}
	who := "host " + h.Hostname
	h.Labels = l.labels(file, f["labels"], who)
	h.Network = l.network(file, f["network"], who, false)
	h.Identity, _ = l.identity(file, f["identity"], who)
	h.Files = l.files(file, f["files"], who)
	macStr := l.str(file, f["mac"], "mac")
	mac, err := net.ParseMAC(macStr)
	if err != nil || len(mac) != 6 {
		l.errf(p, "host %s: bad mac %q: want six hex bytes like 52:54:00:12:34:56", h.Hostname, macStr)
		return
	}
	h.MAC = mac
	if !hostnameRE.MatchString(h.Hostname) {
		l.errf(p, "host %s: bad hostname %q: want lowercase letters, digits, '-' and '.'", mac, h.Hostname)
		return
	}
	if h.Image != "" && h.Channel != "" {
		l.errf(p, "host %s: set image or channel, not both", h.Hostname)
	}
	if prev := l.d.hostByMAC[mac.String()]; prev != nil {
		l.errf(p, "duplicate MAC %s: host %s (first at %s, host %s)", mac, h.Hostname, prev.Pos, prev.Hostname)
		return
	}
	if prev := l.d.hostByName[h.Hostname]; prev != nil {
		l.errf(p, "duplicate hostname %s (first at %s)", h.Hostname, prev.Pos)
		return
	}
	l.d.hostByMAC[mac.String()] = h
	l.d.hostByName[h.Hostname] = h
	l.d.Hosts = append(l.d.Hosts, h)
}

func (l *loader) rollout(file string, n *yaml.Node) {
	f := l.mapping(file, n, append([]string{"name", "image", "group", "hosts", "percent"}, autoKeys...)...)
	r := &Rollout{
		Name:  l.str(file, f["name"], "name"),
		Image: l.str(file, f["image"], "image"),
		Group: l.str(file, f["group"], "group"),
		Hosts: l.strs(file, f["hosts"], "hosts"),
		Pos:   Pos{file, n.Line},
	}
	if pn := f["percent"]; pn != nil {
		if err := pn.Decode(&r.Percent); err != nil {
			l.errf(Pos{file, pn.Line}, "rollout %s: percent %q: want a whole number 0..100", r.Name, pn.Value)
		}
	}
	if r.Name == "" {
		l.errf(r.Pos, "rollout: name missing")
		return
	}
	l.auto(file, f, r)
	for _, prev := range l.d.Rollouts {
		if prev.Name == r.Name {
			l.errf(r.Pos, "duplicate rollout %s (first at %s)", r.Name, prev.Pos)
			return
		}
	}
	l.d.Rollouts = append(l.d.Rollouts, r)
}

// crossCheck resolves references once every file is read.
func (l *loader) crossCheck() {
	d := l.d
	names := make([]string, 0, len(d.Channels))
	for c := range d.Channels {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		if d.imageByRef[d.Channels[c]] == nil {
			l.errf(l.channelPos[c], "channel %s: unknown image %q%s", c, d.Channels[c], l.imageHint())
		}
	}
	checkRef := func(p Pos, who, image, channel string) {
		if image != "" && d.imageByRef[image] == nil {
			l.errf(p, "%s: unknown image %q%s", who, image, l.imageHint())
		}
		if channel != "" {
			if _, ok := d.Channels[channel]; !ok {
				l.errf(p, "%s: unknown channel %q", who, channel)
			}
		}
	}
	gnames := make([]string, 0, len(d.Groups))
	for g := range d.Groups {
		gnames = append(gnames, g)
	}
	sort.Strings(gnames)
	for _, gn := range gnames {
		g := d.Groups[gn]
		checkRef(g.Pos, "group "+g.Name, g.Image, g.Channel)
	}
	for _, h := range d.Hosts {
		who := "host " + h.Hostname
		if h.Group != "" && d.Groups[h.Group] == nil {
			l.errf(h.Pos, "%s: unknown group %q", who, h.Group)
			continue
		}
		checkRef(h.Pos, who, h.Image, h.Channel)
		if h.Image == "" && h.Channel == "" {
			if g := d.Groups[h.Group]; g == nil || (g.Image == "" && g.Channel == "") {
				l.errf(h.Pos, "%s: no image: set image or channel on the host or on its group", who)
			}
		}
		// The merged configuration, and every template run for this
		// host, with the image the YAML gives it: an assignment through
		// the API changes only .Image.
		_, problems := d.HostConfig(h, d.HostImage(h))
		l.problems = append(l.problems, problems...)
	}
	for _, r := range d.Rollouts {
		who := "rollout " + r.Name
		if d.imageByRef[r.Image] == nil {
			l.errf(r.Pos, "%s: unknown image %q%s", who, r.Image, l.imageHint())
		}
		if r.Group != "" && d.Groups[r.Group] == nil {
			l.errf(r.Pos, "%s: unknown group %q", who, r.Group)
		}
		if err := d.checkRollout(r); err != nil {
			l.errf(r.Pos, "%s: %v", who, err)
		}
	}
}

func (l *loader) imageHint() string {
	if len(l.d.Images) == 0 {
		return " (no images declared)"
	}
	refs := make([]string, 0, len(l.d.Images))
	for _, i := range l.d.Images {
		refs = append(refs, i.Ref())
	}
	if len(refs) > 5 {
		refs = append(refs[:5], "...")
	}
	return " (known: " + strings.Join(refs, ", ") + ")"
}
