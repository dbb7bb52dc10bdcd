package fleet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/hnboot/hnboot/internal/hostconfig"
	"gopkg.in/yaml.v3"
)

// Network is the network: section of a group or a host, as written. The
// host's and its group's merge field by field (EffectiveNetwork); unset
// fields are zero.
type Network struct {
	Interface string           // a name or a MAC (canonical)
	Bond      *hostconfig.Bond // with Interface: one or the other
	VLAN      *hostconfig.VLAN // ID 0: "vlan: none", a host's way to leave its group's VLAN
	MTU       int
	DHCP      *bool
	Addresses []string // hosts only
	Gateway   []string
	DNS       []string
	Search    []string
}

// FileSpec is one entry of files:. Content is a text/template over
// TemplateData, rendered by imaged for each host (see HostConfig).
type FileSpec struct {
	Path    string
	Mode    string
	Owner   string
	Content string
	Pos     Pos // the entry

	contentLine int // line of the template's first line
	tmpl        *template.Template
}

// TemplateData is what a files: template sees: {{.Hostname}},
// {{.Identity.certname}}, {{range .DNS}}...
//
// Templates are rendered by imaged, not on the host: the values are all
// the fleet's (nothing a template needs is generated on the host, and the
// host's secrets must never be in a file served by an open endpoint), the
// server checks every template against every host at load, with file and
// line, and the init stays without a template engine: text/template adds
// 2.6 MB (34%) to the init binary, 0.8 MB after zstd, because reflection
// by method name keeps every exported method in the binary. The price: a
// hostname or address given on the kernel command line changes
// /etc/hostname and the network files, not the content of files:.
type TemplateData struct {
	Hostname  string
	MAC       string // 52:54:00:12:34:56
	Group     string
	Image     TemplateImage // the image imaged assigns the host now
	Interface string        // network.interface (name or MAC), or "" with a bond
	IP        string        // the first address without its prefix length, "" with DHCP
	Addresses []string      // CIDR
	Gateway   string        // the first gateway
	DNS       []string
	Search    []string
	Identity  map[string]string // identity: values, host's over group's; a missing key is an error
}

// TemplateImage is the assigned image in TemplateData.
type TemplateImage struct{ Name, Version, Digest string }

// templateFuncs are all a template has besides text/template's builtins
// (which reach no file, environment or process: the data is plain
// values). call is replaced, since it is the one builtin that runs
// something (a func value; the data has none, but a template has no use
// for it either).
var templateFuncs = template.FuncMap{
	"join":       strings.Join,
	"split":      strings.Split,
	"lower":      strings.ToLower,
	"upper":      strings.ToUpper,
	"replace":    strings.ReplaceAll,
	"trimPrefix": strings.TrimPrefix,
	"trimSuffix": strings.TrimSuffix,
	"addr": func(cidr string) (string, error) { // "192.0.2.17/24" → "192.0.2.17"
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return "", fmt.Errorf("addr: %q is not an address with prefix length", cidr)
		}
		return p.Addr().String(), nil
	},
	"call": func(...any) (string, error) { return "", fmt.Errorf("call is not available in hnboot templates") },
}

// parseTemplate parses content, refusing define, template and block: a
// template that calls templates can recurse or fan out without bound.
func parseTemplate(content string) (*template.Template, error) {
	t, err := template.New("t").Option("missingkey=error").Funcs(templateFuncs).Parse(content)
	if err != nil {
		return nil, err
	}
	if len(t.Templates()) > 1 {
		return nil, fmt.Errorf("define and block are not available in hnboot templates")
	}
	var bad parse.Node
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n != nil {
				for _, c := range n.Nodes {
					walk(c)
				}
			}
		case *parse.IfNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.List)
			walk(n.ElseList)
		case *parse.TemplateNode:
			bad = n
		}
	}
	if t.Tree != nil {
		walk(t.Tree.Root)
	}
	if bad != nil {
		return nil, fmt.Errorf("template: t:%d: {{template}} is not available in hnboot templates", lineOf(content, int(bad.Position())))
	}
	return t, nil
}

func lineOf(s string, offset int) int {
	if offset > len(s) {
		offset = len(s)
	}
	return 1 + strings.Count(s[:offset], "\n")
}

// limitWriter fails writes past its limit, which stops the execution.
type limitWriter struct {
	b     strings.Builder
	limit int
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if w.b.Len()+len(p) > w.limit {
		return 0, fmt.Errorf("output over %d bytes", w.limit)
	}
	return w.b.Write(p)
}

var (
	templateErr  = regexp.MustCompile(`^template: t:(\d+)(?::\d+)?: (?:executing "t" at )?(.*)$`)
	unknownField = regexp.MustCompile(`can't evaluate field (\w+) in type \*?fleet\.TemplateData$`)
	noIdentity   = regexp.MustCompile(`^<\.Identity\.(\w+)>: map has no entry for key "\w+"$`)
)

// TemplateFields is what unknown-field errors list.
const TemplateFields = ".Hostname .MAC .Group .Image.Name .Image.Version .Image.Digest .Interface .IP .Addresses .Gateway .DNS .Search .Identity.KEY"

// templateError turns a text/template error into "FILE:LINE: ..." at the
// line of the fleet file the template line is on.
func (f *FileSpec) templateError(file string, err error) (Pos, string) {
	msg := err.Error()
	if m := templateErr.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		msg = m[2]
		if u := unknownField.FindStringSubmatch(msg); u != nil {
			msg = fmt.Sprintf("unknown field .%s (there are %s)", u[1], TemplateFields)
		} else if u := noIdentity.FindStringSubmatch(msg); u != nil {
			msg = fmt.Sprintf("<.Identity.%s>: the host has no identity value %s (set it on the host or its group)", u[1], u[1])
		}
		return Pos{file, f.contentLine + n - 1}, msg
	}
	return Pos{file, f.contentLine}, msg
}

// render executes f's template for one host.
func (f *FileSpec) render(data *TemplateData) (string, error) {
	w := &limitWriter{limit: hostconfig.MaxFileBytes}
	if err := f.tmpl.Execute(w, data); err != nil {
		return "", err
	}
	return w.b.String(), nil
}

// The keys of network: and of a files: entry (README's tables list them).
var (
	networkKeys = []string{"interface", "bond", "vlan", "mtu", "dhcp", "address", "addresses", "ip", "gateway", "dns", "search"}
	fileKeys    = []string{"path", "mode", "owner", "content"}
)

// network reads a network: mapping. Each value is checked here, at its
// line; what depends on several values (a gateway in an address's
// subnet, dhcp against addresses) is checked once the host's and its
// group's are merged (checkHosts).
func (l *loader) network(file string, n *yaml.Node, who string, isGroup bool) Network {
	var nw Network
	if n == nil {
		return nw
	}
	f := l.mapping(file, n, networkKeys...)
	at := func(key string) Pos { return Pos{file, f[key].Line} }
	if v := f["interface"]; v != nil {
		s := l.str(file, v, "interface")
		if c, err := hostconfig.CheckInterface(s); err != nil {
			l.errf(at("interface"), "%s: interface %q: %v", who, s, err)
		} else {
			nw.Interface = c
		}
	}
	if v := f["bond"]; v != nil {
		nw.Bond = l.bond(file, v, who)
	}
	if nw.Interface != "" && nw.Bond != nil {
		l.errf(at("bond"), "%s: set interface or bond, not both (a bond's members are its interfaces)", who)
		nw.Bond = nil
	}
	if v := f["vlan"]; v != nil {
		nw.VLAN = l.vlan(file, v, who)
	}
	if v := f["mtu"]; v != nil {
		if err := v.Decode(&nw.MTU); err != nil || nw.MTU < hostconfig.MinMTU || nw.MTU > hostconfig.MaxMTU {
			l.errf(at("mtu"), "%s: mtu %q: want a number of bytes %d..%d", who, v.Value, hostconfig.MinMTU, hostconfig.MaxMTU)
			nw.MTU = 0
		}
	}
	if v := f["dhcp"]; v != nil {
		var b bool
		if err := v.Decode(&b); err != nil {
			l.errf(at("dhcp"), "%s: dhcp %q: want true or false", who, v.Value)
		} else {
			nw.DHCP = &b
		}
	}
	var addrKey string
	for _, k := range []string{"address", "addresses", "ip"} {
		if f[k] == nil {
			continue
		}
		if addrKey != "" {
			l.errf(at(k), "%s: %s and %s: write the addresses once", who, addrKey, k)
			continue
		}
		addrKey = k
		if isGroup {
			l.errf(at(k), "%s: %s: an address belongs to one host; set it on each host", who, k)
			continue
		}
		for _, s := range l.strs(file, f[k], k) {
			if _, err := netip.ParsePrefix(s); err != nil {
				l.errf(at(k), "%s: %s %q: want an address with prefix length, e.g. 192.0.2.17/24", who, k, s)
				continue
			}
			nw.Addresses = append(nw.Addresses, s)
		}
	}
	if nw.DHCP != nil && *nw.DHCP && len(nw.Addresses) > 0 {
		l.errf(at("dhcp"), "%s: dhcp: true and %s: set one (dhcp, or static addresses)", who, addrKey)
		nw.DHCP = nil
	}
	addrs := func(key string) []string {
		var out []string
		for _, s := range l.strs(file, f[key], key) {
			if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" {
				l.errf(at(key), "%s: %s %q: not an IP address", who, key, s)
				continue
			}
			out = append(out, s)
		}
		return out
	}
	nw.Gateway = addrs("gateway")
	nw.DNS = addrs("dns")
	for _, s := range l.strs(file, f["search"], "search") {
		if err := hostconfig.CheckDomain(s); err != nil {
			l.errf(at("search"), "%s: search domain %q: %v", who, s, err)
			continue
		}
		nw.Search = append(nw.Search, s)
	}
	return nw
}

func (l *loader) bond(file string, n *yaml.Node, who string) *hostconfig.Bond {
	f := l.mapping(file, n, "name", "mode", "members")
	p := Pos{file, n.Line}
	b := &hostconfig.Bond{Name: l.str(file, f["name"], "name"), Mode: l.str(file, f["mode"], "mode")}
	ok := true
	if b.Name != "" {
		if _, err := hostconfig.CheckInterface(b.Name); err != nil || hostconfig.IsMAC(b.Name) {
			l.errf(Pos{file, f["name"].Line}, "%s: bond name %q: not an interface name", who, b.Name)
			ok = false
		}
	}
	if b.Mode != "" && !slices.Contains(hostconfig.BondModes, b.Mode) {
		l.errf(Pos{file, f["mode"].Line}, "%s: bond mode %q: want one of %s", who, b.Mode, strings.Join(hostconfig.BondModes, ", "))
		ok = false
	}
	mn := f["members"]
	if mn == nil {
		l.errf(p, "%s: bond without members: list 2 or more NICs (names or MACs)", who)
		return nil
	}
	seen := map[string]bool{}
	for _, m := range l.strs(file, mn, "members") {
		c, err := hostconfig.CheckInterface(m)
		if err != nil {
			l.errf(Pos{file, mn.Line}, "%s: bond member %q: %v", who, m, err)
			ok = false
			continue
		}
		if seen[c] {
			l.errf(Pos{file, mn.Line}, "%s: bond member %s listed twice", who, c)
			ok = false
		}
		seen[c] = true
		b.Members = append(b.Members, c)
	}
	if n := len(b.Members); ok && (n < 2 || n > hostconfig.MaxBondMembers) {
		l.errf(Pos{file, mn.Line}, "%s: bond of %d members: a bond needs 2 to %d (names or MACs)", who, n, hostconfig.MaxBondMembers)
		ok = false
	}
	if !ok {
		return nil
	}
	return b
}

func (l *loader) vlan(file string, n *yaml.Node, who string) *hostconfig.VLAN {
	v := n
	if n.Kind == yaml.MappingNode {
		v = l.mapping(file, n, "id")["id"]
		if v == nil {
			l.errf(Pos{file, n.Line}, "%s: vlan: id missing", who)
			return nil
		}
	}
	if v.Kind == yaml.ScalarNode && (v.Value == "none" || v.Value == "0") {
		return &hostconfig.VLAN{} // no VLAN, over the group's
	}
	var id int
	if err := v.Decode(&id); err != nil || id < 1 || id > 4094 {
		l.errf(Pos{file, v.Line}, "%s: vlan %q: want a VLAN id 1..4094 (or none)", who, v.Value)
		return nil
	}
	return &hostconfig.VLAN{ID: id}
}

// identity reads identity: a mapping of keys to one-line values; an
// empty value on a host removes its group's.
func (l *loader) identity(file string, n *yaml.Node, who string) (map[string]string, map[string]Pos) {
	if n == nil {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		l.errf(Pos{file, n.Line}, "%s: identity: want a mapping of keys to values (certname: web-07.example.com)", who)
		return nil, nil
	}
	out, pos := map[string]string{}, map[string]Pos{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := Pos{file, k.Line}
		if err := hostconfig.CheckIdentityKey(k.Value); err != nil {
			l.errf(p, "%s: identity key %q: %v", who, k.Value, err)
			continue
		}
		if _, dup := out[k.Value]; dup {
			l.errf(p, "%s: identity key %s twice", who, k.Value)
			continue
		}
		if v.Kind != yaml.ScalarNode {
			l.errf(Pos{file, v.Line}, "%s: identity %s: want a single value", who, k.Value)
			continue
		}
		if err := hostconfig.CheckLine(v.Value, hostconfig.MaxIdentityValue); err != nil {
			l.errf(Pos{file, v.Line}, "%s: identity %s: %v", who, k.Value, err)
			continue
		}
		out[k.Value], pos[k.Value] = v.Value, p
	}
	if len(out) > hostconfig.MaxIdentity {
		l.errf(Pos{file, n.Line}, "%s: %d identity values, over the limit of %d", who, len(out), hostconfig.MaxIdentity)
	}
	return out, pos
}

// files reads files: a list of {path, mode, owner, content}; templates
// are parsed here and executed for each host in checkHosts.
func (l *loader) files(file string, n *yaml.Node, who string) []*FileSpec {
	if n == nil {
		return nil
	}
	var out []*FileSpec
	seen := map[string]Pos{}
	for _, it := range l.seq(file, n, "files") {
		f := l.mapping(file, it, fileKeys...)
		fs := &FileSpec{
			Path:    l.str(file, f["path"], "path"),
			Mode:    l.str(file, f["mode"], "mode"),
			Owner:   l.str(file, f["owner"], "owner"),
			Content: l.str(file, f["content"], "content"),
			Pos:     Pos{file, it.Line},
		}
		what := who + ": file " + fs.Path
		ok := true
		if f["path"] == nil {
			l.errf(fs.Pos, "%s: file without path", who)
			continue
		}
		if err := hostconfig.CheckFilePath(fs.Path); err != nil {
			l.errf(Pos{file, f["path"].Line}, "%s: file path %q: %v", who, fs.Path, err)
			ok = false
		}
		if prev, dup := seen[fs.Path]; dup {
			l.errf(fs.Pos, "%s: listed twice (first at %s)", what, prev)
			ok = false
		}
		seen[fs.Path] = fs.Pos
		if fs.Mode != "" {
			if _, err := hostconfig.FileMode(fs.Mode); err != nil {
				l.errf(Pos{file, f["mode"].Line}, "%s: mode %q: %v", what, fs.Mode, err)
				ok = false
			}
		}
		if fs.Owner != "" {
			if err := hostconfig.CheckOwner(fs.Owner); err != nil {
				l.errf(Pos{file, f["owner"].Line}, "%s: owner %q: %v", what, fs.Owner, err)
				ok = false
			}
		}
		cn := f["content"]
		if cn == nil {
			l.errf(fs.Pos, "%s: content missing (an empty file is content: \"\")", what)
			continue
		}
		fs.contentLine = cn.Line
		if cn.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			fs.contentLine++ // the text starts under "content: |"
		}
		if len(fs.Content) > hostconfig.MaxFileBytes {
			l.errf(Pos{file, cn.Line}, "%s: content of %d bytes, over the limit of %d", what, len(fs.Content), hostconfig.MaxFileBytes)
			ok = false
		}
		t, err := parseTemplate(fs.Content)
		if err != nil {
			p, msg := fs.templateError(file, err)
			l.errf(p, "%s: template: %s", what, msg)
			ok = false
		}
		fs.tmpl = t
		if ok {
			out = append(out, fs)
		}
	}
	if len(out) > hostconfig.MaxFiles {
		l.errf(Pos{file, n.Line}, "%s: %d files, over the limit of %d", who, len(out), hostconfig.MaxFiles)
	}
	return out
}

// EffectiveNetwork merges the host's network over its group's, field by
// field: the link (interface or bond) and the addressing (dhcp or
// addresses) each as a whole, so a host's interface replaces its group's
// bond and a host's address its group's dhcp: true; every other field
// (vlan, mtu, gateway, dns, search) on its own. Fields neither sets stay
// unset, and the host keeps what its command line or host.conf says.
func (d *Desired) EffectiveNetwork(h *Host) hostconfig.Network {
	var g Network
	if gr := d.Groups[h.Group]; gr != nil {
		g = gr.Network
	}
	hn := h.Network
	var n hostconfig.Network
	switch {
	case hn.Interface != "" || hn.Bond != nil:
		n.Interface, n.Bond = hn.Interface, hn.Bond
	default:
		n.Interface, n.Bond = g.Interface, g.Bond
	}
	vlan := g.VLAN
	if hn.VLAN != nil {
		vlan = hn.VLAN
	}
	if vlan != nil && vlan.ID != 0 {
		n.VLAN = &hostconfig.VLAN{ID: vlan.ID}
	}
	n.MTU = hn.MTU
	if n.MTU == 0 {
		n.MTU = g.MTU
	}
	dhcp := g.DHCP
	if hn.DHCP != nil || len(hn.Addresses) > 0 {
		dhcp = hn.DHCP
	}
	n.Addresses = hn.Addresses
	n.DHCP = dhcp != nil && *dhcp && len(n.Addresses) == 0
	n.Gateway = hn.Gateway
	if len(n.Gateway) == 0 && len(n.Addresses) > 0 {
		n.Gateway = g.Gateway // a group's gateway is for its static hosts
	}
	n.DNS = firstList(hn.DNS, g.DNS)
	n.Search = firstList(hn.Search, g.Search)
	if n.Bond != nil {
		b := *n.Bond
		b.Members = slices.Clone(b.Members)
		n.Bond = &b
	}
	n.Addresses, n.Gateway = slices.Clone(n.Addresses), slices.Clone(n.Gateway)
	n.DNS, n.Search = slices.Clone(n.DNS), slices.Clone(n.Search)
	return n
}

func firstList(a, b []string) []string {
	if len(a) > 0 {
		return a
	}
	return b
}

// EffectiveIdentity merges the host's identity values over its group's,
// key by key; a host's empty value removes the group's.
func (d *Desired) EffectiveIdentity(h *Host) map[string]string {
	out := map[string]string{}
	if g := d.Groups[h.Group]; g != nil {
		for k, v := range g.Identity {
			out[k] = v
		}
	}
	for k, v := range h.Identity {
		out[k] = v
	}
	for k, v := range out {
		if v == "" {
			delete(out, k)
		}
	}
	return out
}

// effectiveFiles is the group's files with the host's over them by path,
// in path order.
func (d *Desired) effectiveFiles(h *Host) []*FileSpec {
	byPath := map[string]*FileSpec{}
	if g := d.Groups[h.Group]; g != nil {
		for _, f := range g.Files {
			byPath[f.Path] = f
		}
	}
	for _, f := range h.Files {
		byPath[f.Path] = f
	}
	out := make([]*FileSpec, 0, len(byPath))
	for _, f := range byPath {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *FileSpec) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// HostConfig is what the host is told to be: its hostname, its group's
// and its own network, identity and files merged, the files' templates
// rendered for image img (nil: none). What cannot be used comes back as
// problems, each naming the file and line it came from, and is left out;
// the rest is valid (hostconfig.Validate).
func (d *Desired) HostConfig(h *Host, img *Image) (hostconfig.Config, []string) {
	c := hostconfig.Config{Hostname: h.Hostname, Network: d.EffectiveNetwork(h), Identity: d.EffectiveIdentity(h)}
	if len(c.Identity) == 0 {
		c.Identity = nil
	}
	var problems []string
	if hn := h.Network; hn.DHCP != nil && !*hn.DHCP && len(hn.Addresses) == 0 {
		problems = append(problems, fmt.Sprintf("%s: host %s: dhcp: false, but no address", h.Pos, h.Hostname))
	}
	data := d.templateData(h, img, c)
	for _, f := range d.effectiveFiles(h) {
		content, err := f.render(data)
		if err != nil {
			p, msg := f.templateError(f.Pos.File, err)
			problems = append(problems, fmt.Sprintf("%s: file %s for host %s: %s", p, f.Path, h.Hostname, msg))
			continue
		}
		c.Files = append(c.Files, hostconfig.File{Path: f.Path, Mode: f.Mode, Owner: f.Owner, Content: content})
	}
	ok, ps := c.Validate("")
	for _, p := range ps {
		problems = append(problems, fmt.Sprintf("%s: host %s: %s", d.posOf(h, p), h.Hostname, p))
	}
	// As served (writeJSON escapes <, > and &, six bytes each).
	if b, err := json.Marshal(ok); err == nil && len(b) > hostconfig.MaxServed {
		problems = append(problems, fmt.Sprintf("%s: host %s: configuration of %d bytes as JSON, over the limit of %d (hosts read at most %d of their answer): make its files smaller",
			h.Pos, h.Hostname, len(b), hostconfig.MaxServed, hostconfig.MaxBytes))
		ok.Files = nil
	}
	return ok, problems
}

// posOf is where a problem of the merged configuration was written: the
// file entry for a file, else the host (whose values win, or whose
// group's values it takes).
func (d *Desired) posOf(h *Host, p hostconfig.Problem) Pos {
	for _, f := range d.effectiveFiles(h) {
		if p.Unit() == hostconfig.UnitFile(f.Path) {
			return f.Pos
		}
	}
	return h.Pos
}

func (d *Desired) templateData(h *Host, img *Image, c hostconfig.Config) *TemplateData {
	n := c.Network
	td := &TemplateData{
		Hostname:  h.Hostname,
		MAC:       h.MAC.String(),
		Group:     h.Group,
		Interface: n.Interface,
		Addresses: slices.Clone(n.Addresses),
		DNS:       slices.Clone(n.DNS),
		Search:    slices.Clone(n.Search),
		Identity:  map[string]string{},
	}
	if img != nil {
		td.Image = TemplateImage{Name: img.Name, Version: img.Version, Digest: img.Digest}
	}
	if len(n.Addresses) > 0 {
		if p, err := netip.ParsePrefix(n.Addresses[0]); err == nil {
			td.IP = p.Addr().String()
		}
	}
	if len(n.Gateway) > 0 {
		td.Gateway = n.Gateway[0]
	}
	for k, v := range c.Identity {
		td.Identity[k] = v
	}
	return td
}
