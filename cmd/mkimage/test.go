package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hnboot/hnboot/agent"
	"github.com/hnboot/hnboot/bootloader"
	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/diskimg"
	"github.com/hnboot/hnboot/internal/layout"
	"github.com/hnboot/hnboot/internal/manifest"
	"github.com/hnboot/hnboot/internal/vmboot"
)

const testHelp = `Usage: mkimage test IMAGE [--health agent.yaml] [--deadline 10m] [--firmware uefi|bios]
                    [--kvm auto|on|off] [--console-log FILE] [--json]

Boots IMAGE in QEMU the way a host boots it and passes only when the
system is healthy. The scratch disk is what "mkimage disk" makes (GPT,
EFI-BOOT with GRUB, hostpart with IMAGE as hn-root.img); GRUB loads the
image's own /boot/vmlinuz and /boot/initramfs, the hnboot init in it
mounts the image read-only under its overlay, instantiates the host and
starts the image's init, systemd. Health is what confirms a trial boot on
a real host: the health: section of an agent.yaml (--health; the agent's
own checks, run by its own code inside the guest), or by default
multi-user.target active and "systemctl is-system-running" = running
(no failed units), for 10 s. To see it, the test disk carries a probe
(this mkimage, in hostpart/data, bound at /var/lib/hnboot-test by a
host.conf state_dir): the init starts it first (hn.init=), it adds one
unit to the boot's root (the overlay in memory: the image stays
byte-identical) and starts /sbin/init; the unit runs "mkimage probe",
which prints its result on the serial console and powers off. The image
needs systemd as its init.

On failure it prints the reason and the console's last lines; the whole
console is kept in --console-log (default IMAGE.test.log).

QEMU runs under TCG unless KVM is usable here (--kvm auto: /dev/kvm
opens and creates a VM) or asked for (--kvm on); HNBOOT_KVM sets the
default. Under TCG a Debian system takes 1-3 minutes to be healthy.

Exit status: 0 healthy; 1 not healthy (checks failed, the deadline
passed, the boot failed); 2 wrong usage; 3 the test could not run
(no QEMU or OVMF, the disk could not be built).

Examples:
  mkimage test web.img
  mkimage test web.img --health examples/ci/agent.yaml --deadline 15m --json > test.json
`

// ExitTestError is mkimage test's status when it could not test at all.
const ExitTestError = 3

// Where the probe lives in the booted system (a state directory the init
// binds from hostpart/data), and the host.conf that declares it.
const (
	probeDir  = "/var/lib/hnboot-test"
	probeConf = "# mkimage test: its probe, bound from hostpart/data\nstate_dir = " + probeDir + "\n"
)

// probeInit is the first process in the image under test (hn.init): it
// adds the probe's unit to this boot's root, the overlay in memory, and
// starts the image's own init as PID 1.
const probeInit = `#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /etc/systemd/system/multi-user.target.wants
cp ` + probeDir + `/hnboot-test.service /etc/systemd/system/hnboot-test.service
ln -sf /etc/systemd/system/hnboot-test.service /etc/systemd/system/multi-user.target.wants/hnboot-test.service
exec /sbin/init
`

// probeUnit starts once multi-user.target is reached. Type=exec: the
// system counts as started once the probe runs, so the probe itself can
// see "running".
const probeUnit = `[Unit]
Description=mkimage test: health of this boot
After=multi-user.target

[Service]
Type=exec
ExecStart=` + probeDir + `/mkimage probe --health ` + probeDir + `/health.yaml --console /dev/ttyS0
`

// TestResult is mkimage test's --json output.
type TestResult struct {
	Image       string       `json:"image"`
	SHA256      string       `json:"sha256,omitempty"` // from the manifest, when there is one
	Result      string       `json:"result"`           // passed, failed or error
	Reason      string       `json:"reason"`
	Firmware    string       `json:"firmware"`
	Accel       string       `json:"accel"` // tcg or kvm
	Seconds     float64      `json:"seconds"`
	Health      *probeReport `json:"health,omitempty"`
	ConsoleLog  string       `json:"console_log"`
	ConsoleTail []string     `json:"console_tail,omitempty"`
}

var bootFailure = regexp.MustCompile(`hninit: .*cannot boot: .*|Kernel panic - not syncing.*|hnboot-probe: result (\{.*\})`)

func runTest(ctx context.Context, name string, args []string, std cli.IO) error {
	fs := cli.NewFlagSet(name, testHelp, std)
	health := fs.String("health", "", "agent.yaml whose health: section decides (default: multi-user.target and no failed units for 10s)")
	deadline := fs.Duration("deadline", 10*time.Minute, "from QEMU's start until the system must be healthy")
	firmware := fs.String("firmware", "uefi", "uefi (OVMF) or bios (SeaBIOS)")
	kvmDefault := os.Getenv("HNBOOT_KVM")
	if kvmDefault == "" {
		kvmDefault = "auto"
	}
	kvm := fs.String("kvm", kvmDefault, "auto, on or off")
	memory := fs.Int("memory", 1024, "guest memory in MiB")
	consoleLog := fs.String("console-log", "", "file for the whole console (default IMAGE.test.log)")
	asJSON := fs.Bool("json", false, "print the result as JSON on stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := fs.WantArgs(1, 1, "IMAGE"); err != nil {
		return err
	}
	image := fs.Arg(0)
	if *firmware != "uefi" && *firmware != "bios" {
		return fs.Usagef("--firmware %q: want uefi or bios", *firmware)
	}
	if *kvm != "auto" && *kvm != "on" && *kvm != "off" {
		return fs.Usagef("--kvm %q: want auto, on or off (HNBOOT_KVM too)", *kvm)
	}
	if *deadline <= 0 {
		return fs.Usagef("--deadline %v: want a positive duration", *deadline)
	}
	res := &TestResult{Image: image, Firmware: *firmware, Accel: "tcg", ConsoleLog: *consoleLog}
	if res.ConsoleLog == "" {
		res.ConsoleLog = image + ".test.log"
	}
	if m, err := manifest.ReadFile(layout.ManifestFor(image)); err == nil {
		res.SHA256 = m.SHA256
	}
	healthYAML := []byte(fmt.Sprintf("health:\n  units: [multi-user.target]\n  system: true\n  settle: 10s\n  deadline: %s\n  interval: 2s\n", *deadline))
	if *health != "" {
		b, err := os.ReadFile(*health)
		if err != nil {
			return fmt.Errorf("test: --health: %w", err)
		}
		if _, err := agent.ParseConfig(*health, b); err != nil {
			return fmt.Errorf("test: --health: %w", err)
		}
		healthYAML = b
	}
	couldNot := func(err error) error {
		res.Result, res.Reason = "error", err.Error()
		if *asJSON {
			printJSON(std, res)
		}
		return &cli.ExitError{Code: ExitTestError, Err: fmt.Errorf("test: %s: could not test: %w", image, err)}
	}
	exe, err := os.Executable()
	if err != nil {
		return couldNot(fmt.Errorf("the probe (this mkimage): %w", err))
	}
	st, err := os.Stat(image)
	if err != nil {
		return couldNot(err)
	}
	work, err := os.MkdirTemp("", "mkimage-test-")
	if err != nil {
		return couldNot(err)
	}
	defer os.RemoveAll(work)

	disk := filepath.Join(work, "disk.img")
	size := (st.Size() + 2<<30 + (1<<20 - 1)) / (1 << 20) * (1 << 20)
	data := filepath.Join(layout.DataDir, strings.TrimPrefix(probeDir, "/"))
	o := diskimg.Options{
		Out: disk, Size: size, EFISize: diskimg.DefaultEFISize, Root: image, HostpartFS: "ext4",
		GrubConfig: bootloader.GrubConfig(bootloader.Options{Extra: "hn.init=" + probeDir + "/init", Timeout: -1}),
		Files: map[string]diskimg.File{
			layout.HostConf:                            {Data: []byte(probeConf), Mode: 0o644},
			filepath.Join(data, "init"):                {Data: []byte(probeInit), Mode: 0o755},
			filepath.Join(data, "hnboot-test.service"): {Data: []byte(probeUnit), Mode: 0o644},
			filepath.Join(data, "health.yaml"):         {Data: healthYAML, Mode: 0o644},
			filepath.Join(data, "mkimage"):             {Src: exe, Mode: 0o755},
		},
		Log: newLogger(std.Stderr),
	}
	bm := bootloader.BootUEFI
	if *firmware == "bios" {
		bm = bootloader.BootBIOS
	}
	if bm.UEFI() {
		if o.EFIBinary, err = bootloader.EFIImage(ctx); err != nil {
			return couldNot(err)
		}
	}
	if bm.BIOS() {
		if o.BIOSBootImg, o.BIOSCore, err = bootloader.BIOSImages(ctx); err != nil {
			return couldNot(err)
		}
	}
	if _, err := diskimg.Build(ctx, o); err != nil {
		return couldNot(err)
	}
	useKVM := *kvm == "on"
	if *kvm == "auto" {
		var why string
		useKVM, why = vmboot.KVMUsable()
		if !useKVM {
			fmt.Fprintf(std.Stderr, "test: KVM not usable (%s): TCG\n", why)
		}
	}
	if useKVM {
		res.Accel = "kvm"
	}
	logf, err := os.Create(res.ConsoleLog)
	if err != nil {
		return couldNot(fmt.Errorf("console log: %w", err))
	}
	defer logf.Close()
	fmt.Fprintf(std.Stderr, "test: booting %s (%s, %s), deadline %v; console in %s\n", image, strings.ToUpper(*firmware), strings.ToUpper(res.Accel), *deadline, res.ConsoleLog)
	vm, err := vmboot.Start(ctx, vmboot.Options{Disk: disk, UEFI: bm.UEFI(), Memory: *memory, KVM: useKVM, Log: logf})
	if err != nil {
		return couldNot(err)
	}
	defer vm.Kill()
	m, err := vm.Expect(bootFailure.String(), *deadline)
	res.Seconds = vm.Since().Seconds()
	switch {
	case err != nil && errors.Is(err, vmboot.ErrExited):
		res.Result, res.Reason = "failed", "QEMU exited before the system was healthy"
	case err != nil:
		res.Result, res.Reason = "failed", fmt.Sprintf("not healthy within the deadline of %v", *deadline)
	case m[1] == "":
		res.Result, res.Reason = "failed", "the boot failed: "+m[0]
	default:
		var rep probeReport
		if err := json.Unmarshal([]byte(m[1]), &rep); err != nil {
			res.Result, res.Reason = "failed", "the probe's result is not JSON: "+err.Error()
			break
		}
		res.Health = &rep
		res.Result, res.Reason = rep.State, rep.Reason
		if len(rep.FailedUnits) > 0 {
			res.Reason += " (failed units: " + strings.Join(rep.FailedUnits, ", ") + ")"
		}
		vm.Wait(60 * time.Second) // the probe powers the guest off
	}
	vm.Kill()
	if res.Result != agent.HealthPassed {
		lines := strings.Split(strings.TrimRight(vm.Console(), "\n"), "\n")
		res.ConsoleTail = lines[max(0, len(lines)-30):]
	}
	if *asJSON {
		printJSON(std, res)
	}
	if res.Result == agent.HealthPassed {
		if !*asJSON {
			fmt.Fprintf(std.Stdout, "%s: healthy: %s (%s, %s, %.1fs); console in %s\n", image, res.Reason, strings.ToUpper(res.Firmware), strings.ToUpper(res.Accel), res.Seconds, res.ConsoleLog)
		}
		return nil
	}
	fmt.Fprintf(std.Stderr, "--- console (last %d lines; all of it in %s) ---\n%s\n", len(res.ConsoleTail), res.ConsoleLog, strings.Join(res.ConsoleTail, "\n"))
	return fmt.Errorf("test: %s: not healthy: %s (after %.1fs)", image, res.Reason, res.Seconds)
}

func printJSON(std cli.IO, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintln(std.Stdout, string(b))
}
