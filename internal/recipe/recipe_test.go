package recipe

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const full = `name: web
version: "2024.05"
suite: bookworm
architecture: amd64
variant: minbase
sources:
  - uri: http://mirror.example/debian
    suites: [bookworm, bookworm-updates]
  - uri: https://apt.example.com/debian
    suites: [stable]
    components: [main, extra]
    key: keys/example.asc
debs: debs
packages: [systemd-sysv, openssh-server]
kernel: linux-image-amd64
path_exclude: [/usr/share/doc/*]
path_include: [/usr/share/doc/*/copyright]
files:
  - path: /etc/motd
    content: "hello\n"
  - path: /usr/local/bin/app
    source: files/app
    mode: "0755"
    owner: app:app
commands:
  - systemctl enable app.service
fs: squashfs
size: 2G
sign_key: ../fleet.key
trust: fleet.key.pub
keep: [/etc/hostname]
modules: [btrfs]
`

func TestParseFull(t *testing.T) {
	r, err := Parse("ci/web.yaml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ what, got, want string }{
		{"name", r.Name, "web"},
		{"version", r.Version, "2024.05"},
		{"suite", r.Suite, "bookworm"},
		{"dir", r.Dir, "ci"},
		{"debs", r.Debs, "debs"},
		{"kernel", r.Kernel, "linux-image-amd64"},
		{"fs", r.FS, "squashfs"},
		{"packages", strings.Join(r.Packages, ","), "systemd-sysv,openssh-server"},
		{"source 2 key", r.Sources[1].Key, "keys/example.asc"},
		{"source 1 components", strings.Join(r.Sources[0].Components, ","), "main"},
		{"file 2 owner", r.Files[1].Owner, "app:app"},
		{"command", r.Commands[0].Run, "systemctl enable app.service"},
	} {
		if c.got != c.want {
			t.Errorf("Parse(full).%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if r.Files[1].Mode != 0o755 || r.Files[0].Mode != 0o644 {
		t.Errorf("file modes = %o, %o; want 644, 755", r.Files[0].Mode, r.Files[1].Mode)
	}
	if r.Commands[0].Line != 26 || r.Files[1].Line != 21 {
		t.Errorf("lines: command %d, file %d; want 26, 21", r.Commands[0].Line, r.Files[1].Line)
	}
	// Every documented key is in the full example.
	for _, k := range Keys {
		if !strings.Contains(full, "\n"+k+":") && !strings.HasPrefix(full, k+":") {
			t.Errorf("the full example lacks key %s", k)
		}
	}
}

func TestParseDefaults(t *testing.T) {
	r, err := Parse("r.yaml", []byte("name: base\nversion: '1'\nsuite: bookworm\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Sources != nil || r.Variant != "minbase" || r.FS != "ext4" || r.Kernel != "linux-image-ARCH" || r.Architecture != "" {
		t.Errorf("defaults = sources %v, variant %q, fs %q, kernel %q, arch %q; want machine's, minbase, ext4, linux-image-ARCH, machine's",
			r.Sources, r.Variant, r.FS, r.Kernel, r.Architecture)
	}
	r, err = Parse("r.yaml", []byte("name: base\nversion: '1'\nsuite: bookworm\nkernel: none\n"))
	if err != nil || r.Kernel != "" {
		t.Errorf("kernel: none = %q, %v; want no kernel", r.Kernel, err)
	}
}

// Parse(recipe) = the error naming file:line and what is wrong.
func TestParseErrors(t *testing.T) {
	base := "name: web\nversion: '1'\nsuite: bookworm\n"
	for _, tt := range []struct{ in, want string }{
		{"", "r.yaml:1: empty recipe"},
		{"name: [x\n", "r.yaml:1: did not find expected"},
		{"version: '1'\nsuite: bookworm\n", "r.yaml:1: name: required"},
		{base + "colour: red\n", `r.yaml:4: unknown key "colour"`},
		{"name: web@1\nversion: '1'\nsuite: bookworm\n", `r.yaml:1: name "web@1"`},
		{"name: web\nversion: 1 2\nsuite: bookworm\n", `r.yaml:2: version "1 2"`},
		{"name: web\nversion: '1'\n", "r.yaml:1: suite: required"},
		{base + "variant: buildd\n", `r.yaml:4: variant "buildd": want one of`},
		{base + "packages: [ok, 'bad name']\n", `r.yaml:4: packages: "bad name" is not a package name`},
		{base + "kernel: linux image\n", `r.yaml:4: kernel "linux image"`},
		{base + "sources:\n  - suites: [bookworm]\n", "r.yaml:5: sources: uri required"},
		{base + "sources:\n  - uri: ftp://x/debian\n    suites: [bookworm]\n", `r.yaml:5: sources: uri "ftp://x/debian"`},
		{base + "sources:\n  - uri: http://x/debian\n", "r.yaml:5: sources: suites required"},
		{base + "sources:\n  - uri: http://x/debian\n    suites: [b]\n    key: ../k.asc\n", `r.yaml:7: sources: key "../k.asc": want a path inside the recipe's directory`},
		{base + "sources: []\n", "r.yaml:4: sources: empty"},
		{base + "debs: /srv/debs\n", `r.yaml:4: debs "/srv/debs": want a path inside`},
		{base + "path_exclude: [usr/share/doc]\n", `r.yaml:4: path_exclude: "usr/share/doc": want an absolute glob`},
		{base + "files:\n  - path: etc/motd\n    content: x\n", `r.yaml:5: files: path "etc/motd": want an absolute path`},
		{base + "files:\n  - path: /etc/../shadow\n    content: x\n", `r.yaml:5: files: path "/etc/../shadow": want a clean path`},
		{base + "files:\n  - path: /\n    content: x\n", `r.yaml:5: files: path "/": not the root`},
		{base + "files:\n  - path: /etc/motd\n", "r.yaml:5: files: /etc/motd: want content"},
		{base + "files:\n  - path: /etc/motd\n    content: x\n    source: motd\n", "r.yaml:5: files: /etc/motd: content and source both given"},
		{base + "files:\n  - path: /etc/motd\n    source: ../../etc/shadow\n", `r.yaml:6: files: source "../../etc/shadow": want a path inside`},
		{base + "files:\n  - path: /etc/motd\n    source: /etc/shadow\n", `r.yaml:6: files: source "/etc/shadow": want a path inside`},
		{base + "files:\n  - path: /etc/motd\n    content: x\n    mode: rw\n", `r.yaml:7: files: /etc/motd: mode "rw"`},
		{base + "files:\n  - path: /etc/motd\n    content: x\n    mode: '17777'\n", `r.yaml:7: files: /etc/motd: mode "17777"`},
		{base + "files:\n  - path: /etc/motd\n    content: x\n    owner: 'root; rm'\n", `r.yaml:7: files: /etc/motd: owner "root; rm"`},
		{base + "files:\n  - path: /a\n    content: x\n  - path: /a\n    content: y\n", "r.yaml:7: files: /a listed twice (first at line 5)"},
		{base + "commands: ['   ']\n", "r.yaml:4: commands: empty command"},
		{base + "fs: btrfs\n", `r.yaml:4: fs "btrfs": want ext4 or squashfs`},
		{base + "keep: [etc/hostname]\n", `r.yaml:4: keep "etc/hostname"`},
		{base + "modules: ['../x']\n", `r.yaml:4: modules: "../x" is not a module name`},
		{base + "name: again\n", `r.yaml:4: key "name" given twice`},
	} {
		_, err := Parse("r.yaml", []byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", tt.in, err, tt.want)
		}
	}
}

func write(t *testing.T, dir, name, body string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

const testKey = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"

// ReadFile checks what the recipe names beside it, through the recipe's
// directory only: a symlink out of it is refused like a "..".
func TestReadFileChecksFiles(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	write(t, outside, "secret", "s3cret")
	write(t, dir, "files/app", "#!/bin/sh\n")
	write(t, dir, "keys/ok.asc", testKey)
	write(t, dir, "keys/bad.asc", "not a key")
	write(t, dir, "debs/site_1_all.deb", "!<arch>\n")
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "files", "escape")); err != nil {
		t.Fatal(err)
	}
	base := "name: web\nversion: '1'\nsuite: bookworm\n"
	for _, tt := range []struct{ in, want string }{
		{base + "files:\n  - path: /a\n    source: files/app\n", ""},
		{base + "files:\n  - path: /a\n    source: files/missing\n", "r.yaml:5: files: /a: source: files/missing: no such file"},
		{base + "files:\n  - path: /a\n    source: files/escape\n", "r.yaml:5: files: /a: source: files/escape: path escapes from parent"},
		{base + "files:\n  - path: /a\n    source: files\n", "r.yaml:5: files: /a: source files is not a regular file"},
		{base + "sources:\n  - uri: http://x/d\n    suites: [s]\n    key: keys/ok.asc\n", ""},
		{base + "sources:\n  - uri: http://x/d\n    suites: [s]\n    key: keys/bad.asc\n", "r.yaml:5: sources: key keys/bad.asc: not an OpenPGP public key"},
		{base + "debs: debs\n", ""},
		{base + "debs: files\n", "r.yaml:4: debs: no .deb files in files"},
		{base + "debs: nothere\n", "r.yaml:4: debs: nothere: no such file"},
	} {
		p := filepath.Join(dir, "r.yaml")
		write(t, dir, "r.yaml", tt.in)
		_, err := ReadFile(p)
		got := ""
		if err != nil {
			got = strings.ReplaceAll(err.Error(), dir+"/", "")
		}
		if tt.want == "" && err != nil || tt.want != "" && !strings.Contains(got, tt.want) {
			t.Errorf("ReadFile(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMachineSources(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "sources.list", "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\ndeb-src http://x/debian bookworm main\n")
	write(t, dir, "sources.list.d/debian.sources", "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://off/debian\nSuites: bookworm\nEnabled: no\n")
	write(t, dir, "sources.list.d/other.sources", "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n")
	write(t, dir, "sources.list.d/ignored.list.disabled", "deb http://no/debian bookworm main\n")
	srcs, files, err := MachineSources(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 || len(srcs) != 4 {
		t.Fatalf("MachineSources = %d sources from %v, want 4 from 3 files", len(srcs), files)
	}
	if srcs[0].SignedBy != "/k.gpg" || strings.Join(srcs[0].Components, " ") != "main contrib" {
		t.Errorf("one-line entry = %+v", srcs[0])
	}
	got := string(Deb822(forSuite(srcs, "bookworm")))
	want := `Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
Components: main contrib
Signed-By: /k.gpg

Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`
	if got != want {
		t.Errorf("Deb822(forSuite(bookworm)) =\n%s\nwant\n%s", got, want)
	}
	if n := len(forSuite(srcs, "trixie")); n != 0 {
		t.Errorf("forSuite(trixie) kept %d sources, want none", n)
	}
}

func TestArmorKey(t *testing.T) {
	got, err := armorKey([]byte("junk before\n" + testKey))
	if err != nil || got != strings.TrimSpace(testKey) {
		t.Errorf("armorKey(armored) = %q, %v; want the block", got, err)
	}
	bin := append([]byte{0x99, 0x01}, make([]byte, 100)...)
	got, err = armorKey(bin)
	if err != nil || !strings.HasPrefix(got, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQE") || !strings.HasSuffix(got, "-----END PGP PUBLIC KEY BLOCK-----") {
		t.Errorf("armorKey(binary) = %q, %v", got, err)
	}
	// Inline in deb822: the empty line after BEGIN becomes " .".
	d := string(Deb822([]AptSource{{URIs: []string{"http://x"}, Suites: []string{"s"}, Components: []string{"main"}, SignedBy: got}}))
	if !strings.Contains(d, "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQE") {
		t.Errorf("inline key in deb822:\n%s", d)
	}
}

func TestPlan(t *testing.T) {
	r, err := Parse("/ci/web.yaml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	o := PlanOptions{Arch: "arm64", Stage: "/st", Out: "/st/tree.tar", Cache: "/var/cache/hnboot/apt", Mode: "auto", Version: "7"}
	p, err := r.Plan(o, map[string]string{"keys/example.asc": strings.TrimSpace(testKey)}, []string{"debs/site_1_all.deb"})
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(p.Args, "\n")
	for _, want := range []string{
		"--mode=auto", "--variant=minbase", "--architectures=amd64", "--format=tar",
		"--include=systemd-sysv,openssh-server,linux-image-amd64",
		"--hook-dir=" + FileMirrorHook, "--include=/st/debs/site_1_all.deb",
		"--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--skip=essential/unlink",
		"--setup-hook=sync-in /var/cache/hnboot/apt /var/cache/apt/archives/",
		"--customize-hook=copy-in /st/hnboot-recipe-files /run",
		`--customize-hook=chroot "$1" install -D -m 0644 -o '0' -g '0' /run/hnboot-recipe-files/0 '/etc/motd' || { rc=$?; echo '/ci/web.yaml:19: files: /etc/motd: could not install it'`,
		`--customize-hook=chroot "$1" install -D -m 0755 -o 'app' -g 'app' /run/hnboot-recipe-files/1 '/usr/local/bin/app'`,
		`--customize-hook=chroot "$1" /bin/sh -ec 'systemctl enable app.service' || { rc=$?; echo '/ci/web.yaml:26: commands: "systemctl enable app.service" failed'`,
		"--customize-hook=sync-out /var/cache/apt/archives /var/cache/hnboot/apt",
		"bookworm\n/st/tree.tar\n/st/sources.sources",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("plan lacks %q:\n%s", want, args)
		}
	}
	// Files go in before the commands, and the cache is synced after them.
	if i, j, k := strings.Index(args, "install -D"), strings.Index(args, "systemctl enable"), strings.Index(args, "sync-out"); !(i < j && j < k) {
		t.Errorf("order: files at %d, commands at %d, sync-out at %d; want files, commands, sync-out", i, j, k)
	}
	if p.Version != "7" || p.Kernel != "linux-image-amd64" {
		t.Errorf("plan version %q kernel %q; want 7 (the option's) and linux-image-amd64", p.Version, p.Kernel)
	}
	if p.Copy["hnboot-recipe-files/1"] != "files/app" || string(p.Stage["hnboot-recipe-files/0"]) != "hello\n" || p.Copy["debs/site_1_all.deb"] != "debs/site_1_all.deb" {
		t.Errorf("plan staging = %v / %v", p.Copy, p.Stage)
	}
	if s := string(p.Stage["sources.sources"]); !strings.Contains(s, "URIs: https://apt.example.com/debian\nSuites: stable\nComponents: main extra\nSigned-By:\n -----BEGIN") {
		t.Errorf("sources.sources =\n%s", s)
	}
	if strings.Join(p.Env, " ") != "INITRD=No" {
		t.Errorf("plan env = %v, want INITRD=No", p.Env)
	}

	// The machine's sources, the machine's architecture, no version.
	r, _ = Parse("/ci/base.yaml", []byte("name: base\nsuite: trixie\n"))
	if _, err := r.Plan(PlanOptions{Arch: "amd64", Version: "1", AptFiles: []string{"/etc/apt/sources.list"}}, nil, nil); err == nil || !strings.Contains(err.Error(), "suite trixie: the machine's apt sources (/etc/apt/sources.list) have no entry for it") {
		t.Errorf("Plan(trixie on a bookworm machine) = %v", err)
	}
	if _, err := r.Plan(PlanOptions{Arch: "amd64"}, nil, nil); err == nil || !strings.Contains(err.Error(), "version: required") {
		t.Errorf("Plan(no version) = %v", err)
	}
	p, err = r.Plan(PlanOptions{Arch: "arm64", Version: "1", Machine: []AptSource{{URIs: []string{"http://m/debian"}, Suites: []string{"trixie"}, Components: []string{"main"}}}}, nil, nil)
	if err != nil || p.Kernel != "linux-image-arm64" || !strings.Contains(strings.Join(p.Args, " "), "--architectures=arm64") || strings.Contains(strings.Join(p.Args, " "), "sync-out") {
		t.Errorf("Plan(defaults) = %v, %v", p, err)
	}
}

func TestShellQuote(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"plain", "'plain'"},
		{"it's", `'it'\''s'`},
		{"$(rm -rf /)", "'$(rm -rf /)'"},
	} {
		if got := shq(tt.in); got != tt.want {
			t.Errorf("shq(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
