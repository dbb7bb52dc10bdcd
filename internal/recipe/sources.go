package recipe

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// AptSource is one repository as apt reads it (a deb822 stanza or a
// one-line entry), for the sources a build hands to mmdebstrap.
type AptSource struct {
	URIs       []string
	Suites     []string
	Components []string
	// SignedBy is a keyring path or an inline ASCII-armored key, as
	// apt's Signed-By takes it; "" trusts apt's default keyrings.
	SignedBy string
	From     string // file:line it was read from, for messages
}

// MachineSources reads the apt sources of the machine whose /etc/apt is
// etcApt: sources.list and sources.list.d/*.list (one-line format) and
// sources.list.d/*.sources (deb822), binary ("deb") entries only, skipping
// those marked "Enabled: no", in apt's order. It also returns the files
// it read, for messages.
func MachineSources(etcApt string) ([]AptSource, []string, error) {
	files := []string{filepath.Join(etcApt, "sources.list")}
	for _, pat := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", pat))
		sort.Strings(m)
		files = append(files, m...)
	}
	var out []AptSource
	var read []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("apt sources: %w", err)
		}
		read = append(read, f)
		var s []AptSource
		if strings.HasSuffix(f, ".sources") {
			s, err = parseDeb822(f, b)
		} else {
			s, err = parseOneLine(f, b)
		}
		if err != nil {
			return nil, nil, err
		}
		out = append(out, s...)
	}
	return out, read, nil
}

// parseOneLine reads "deb [opt=val ...] URI SUITE [COMPONENT...]" lines.
func parseOneLine(file string, b []byte) ([]AptSource, error) {
	var out []AptSource
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "deb" {
			continue // deb-src, or a blank line
		}
		fields = fields[1:]
		s := AptSource{From: fmt.Sprintf("%s:%d", file, n)}
		if len(fields) > 0 && strings.HasPrefix(fields[0], "[") {
			var opts []string
			for len(fields) > 0 {
				f := fields[0]
				fields = fields[1:]
				opts = append(opts, strings.Trim(f, "[]"))
				if strings.HasSuffix(f, "]") {
					break
				}
			}
			for _, o := range opts {
				if v, ok := strings.CutPrefix(o, "signed-by="); ok {
					s.SignedBy = v
				}
			}
		}
		if len(fields) < 2 {
			return nil, fmt.Errorf("%s: want \"deb URI SUITE [COMPONENT...]\"", s.From)
		}
		s.URIs, s.Suites, s.Components = []string{fields[0]}, []string{fields[1]}, fields[2:]
		out = append(out, s)
	}
	return out, sc.Err()
}

// parseDeb822 reads the stanzas of a .sources file.
func parseDeb822(file string, b []byte) ([]AptSource, error) {
	var out []AptSource
	fields := map[string]string{}
	start, last := 0, ""
	flush := func() {
		if len(fields) == 0 {
			return
		}
		defer func() { fields = map[string]string{} }()
		if !strings.Contains(" "+fields["types"]+" ", " deb ") || strings.EqualFold(strings.TrimSpace(fields["enabled"]), "no") {
			return
		}
		out = append(out, AptSource{
			URIs:       strings.Fields(fields["uris"]),
			Suites:     strings.Fields(fields["suites"]),
			Components: strings.Fields(fields["components"]),
			SignedBy:   strings.TrimSpace(fields["signed-by"]),
			From:       fmt.Sprintf("%s:%d", file, start),
		})
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.TrimSpace(line) == "":
			flush()
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				return nil, fmt.Errorf("%s:%d: continuation line without a field", file, n)
			}
			fields[last] += "\n" + strings.TrimSpace(line)
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("%s:%d: want \"Field: value\"", file, n)
			}
			if len(fields) == 0 {
				start = n
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out, sc.Err()
}

// forSuite keeps the sources that serve suite: their suites equal to it
// or starting with "suite-" (bookworm-updates, bookworm-security), so
// a build machine's other repositories do not end up in the image.
func forSuite(srcs []AptSource, suite string) []AptSource {
	var out []AptSource
	for _, s := range srcs {
		var keep []string
		for _, su := range s.Suites {
			if su == suite || strings.HasPrefix(su, suite+"-") {
				keep = append(keep, su)
			}
		}
		if len(keep) > 0 && len(s.URIs) > 0 {
			s.Suites = keep
			out = append(out, s)
		}
	}
	return out
}

// Deb822 renders sources as one deb822 .sources file, what mmdebstrap
// is given and what the image's apt then uses.
func Deb822(srcs []AptSource) []byte {
	var b bytes.Buffer
	for i, s := range srcs {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\n",
			strings.Join(s.URIs, " "), strings.Join(s.Suites, " "), strings.Join(s.Components, " "))
		if s.SignedBy != "" {
			b.WriteString("Signed-By:")
			lines := strings.Split(strings.TrimRight(s.SignedBy, "\n"), "\n")
			if len(lines) == 1 {
				b.WriteString(" " + lines[0] + "\n")
				continue
			}
			b.WriteString("\n")
			for _, l := range lines {
				if strings.TrimSpace(l) == "" {
					l = "."
				}
				b.WriteString(" " + l + "\n")
			}
		}
	}
	return b.Bytes()
}

// armorKey returns an OpenPGP public key as ASCII armor, for an inline
// Signed-By that apt reads outside the tree (mmdebstrap's downloads) and
// inside it (the image's apt) alike. An armored key is returned as it is;
// a binary one (a .gpg keyring of one key) is armored (RFC 9580 makes the
// checksum line optional, and gpgv reads armor without it).
func armorKey(b []byte) (string, error) {
	const begin = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
	if i := bytes.Index(b, []byte(begin)); i >= 0 {
		s := string(b[i:])
		if !strings.Contains(s, "-----END PGP PUBLIC KEY BLOCK-----") {
			return "", errors.New("armored key without its END line")
		}
		return strings.TrimSpace(s), nil
	}
	// A binary OpenPGP packet starts with a tag byte that has bit 7 set.
	if len(b) < 2 || b[0]&0x80 == 0 {
		return "", errors.New("not an OpenPGP public key (want an armored .asc or a binary .gpg key)")
	}
	enc := base64.StdEncoding.EncodeToString(b)
	var sb strings.Builder
	sb.WriteString(begin + "\n\n")
	for len(enc) > 64 {
		sb.WriteString(enc[:64] + "\n")
		enc = enc[64:]
	}
	sb.WriteString(enc + "\n-----END PGP PUBLIC KEY BLOCK-----")
	return sb.String(), nil
}
