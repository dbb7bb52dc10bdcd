package rootfs

import (
	"path"
	"sort"
	"strings"
)

// Change is one thing Generalize did to the tree.
type Change struct {
	Path   string // "/etc/hostname"
	Action string // "removed" or "emptied"
}

// generalRules say what makes a tree host-specific. A pattern ending in
// "/**" matches every non-directory below that directory.
var generalRules = []struct {
	pattern string
	empty   bool // keep the file, empty (systemd wants /etc/machine-id present)
}{
	{"etc/machine-id", true},
	{"etc/ssh/ssh_host_*", false},
	{"etc/hostname", false},
	{"var/log/**", false},
	{"etc/udev/rules.d/70-persistent-net.rules", false},
	{"var/lib/systemd/random-seed", false},
	{"var/lib/dbus/machine-id", false},
}

// GeneralRules lists the patterns Generalize applies, for help texts.
func GeneralRules() []string {
	var s []string
	for _, r := range generalRules {
		s = append(s, "/"+r.pattern)
	}
	return s
}

func ruleMatch(pattern, p string) bool {
	if dir, ok := strings.CutSuffix(pattern, "/**"); ok {
		return strings.HasPrefix(p, dir+"/")
	}
	ok, _ := path.Match(pattern, p)
	return ok
}

// kept says whether p is at or under one of keep ("/var/log", "etc/hostname").
func kept(p string, keep []string) bool {
	for _, k := range keep {
		k = strings.Trim(path.Clean("/"+k), "/")
		if p == k || strings.HasPrefix(p, k+"/") || k == "" {
			return true
		}
	}
	return false
}

// Generalize makes t a class, not an instance: it empties the machine-id
// and removes SSH host keys, the hostname, log files (their directories
// stay), persistent net rules and random seeds, except paths at or under
// keep. Directories are never removed. It returns what it changed, sorted.
func Generalize(t *Tree, keep []string) []Change {
	var changes []Change
	var paths []string
	for p := range t.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		e := t.entries[p]
		if e == nil || e.Mode.IsDir() || kept(p, keep) {
			continue
		}
		for _, r := range generalRules {
			if !ruleMatch(r.pattern, p) {
				continue
			}
			if r.empty && e.Mode.IsRegular() {
				if e.Size == 0 && e.Link == "" && e.Nlink <= 1 {
					break // already empty
				}
				t.unlink(p)
				t.Add(&Entry{Path: p, Mode: e.Mode &^ 0o7000, UID: e.UID, GID: e.GID, MTime: e.MTime, Nlink: 1})
				changes = append(changes, Change{"/" + p, "emptied"})
				break
			}
			t.unlink(p)
			changes = append(changes, Change{"/" + p, "removed"})
			break
		}
	}
	if len(changes) > 0 {
		t.children = nil
	}
	return changes
}

// unlink removes the name p; when p holds an inode other names link to,
// the first of them takes it over.
func (t *Tree) unlink(p string) {
	e := t.entries[p]
	delete(t.entries, p)
	t.children = nil
	if e == nil || e.Link != "" || e.Nlink <= 1 {
		if e != nil && e.Link != "" {
			if h := t.entries[e.Link]; h != nil && h.Nlink > 1 {
				h.Nlink--
			}
		}
		return
	}
	var links []string
	for q, o := range t.entries {
		if o.Link == p {
			links = append(links, q)
		}
	}
	sort.Strings(links)
	if len(links) == 0 {
		return
	}
	heir := *e
	heir.Path, heir.Nlink = links[0], len(links)
	t.entries[links[0]] = &heir
	for _, q := range links[1:] {
		t.entries[q].Link = links[0]
	}
}
