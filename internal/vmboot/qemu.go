// Package vmboot runs QEMU: a real kernel or a disk through its firmware
// (SeaBIOS, or OVMF for UEFI), with the serial console read line by line.
// It is what "mkimage test" boots an image with, and the harness under
// testvm's end-to-end tests, the demo and the boot benchmarks. It uses
// TCG unless asked for KVM (Options.KVM): the project never assumes KVM.
package vmboot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// InstallHint is what a missing tool's error tells the user to run.
const InstallHint = "run scripts/deps.sh (as root) to install QEMU, OVMF, e2fsprogs and the test kernel"

// Options describe one VM.
type Options struct {
	Kernel  string // bzImage for a direct kernel boot
	Initrd  string
	Append  string    // kernel command line; console=ttyS0 is added
	Disk    string    // raw disk image, attached as virtio-blk
	Memory  int       // MiB; default 768
	Extra   []string  // more QEMU arguments
	Console io.Writer // optional copy of the console, e.g. os.Stdout for the demo
	Name    string    // prefix for the console copy
	// MAC adds a virtio NIC with this address on an isolated QEMU hub (no
	// backend: not one packet leaves the VM), so the init sees a real MAC.
	MAC string
	// UEFI boots with OVMF instead of SeaBIOS. Without Kernel the firmware
	// boots Disk (GRUB, for UEFI and for BIOS alike).
	UEFI bool
	// OVMFVars is this VM's copy of the OVMF variable store; Start makes
	// one from OVMFVarsTemplate when UEFI is set and it is empty.
	OVMFVars string
	// Netns runs QEMU inside this network namespace (ip netns exec), so
	// -netdev tap can open tap devices that live there.
	Netns string
	// KVM runs the guest with KVM acceleration (-accel kvm -cpu host);
	// see KVMUsable. Default: TCG.
	KVM bool
	// NoEntropy boots QEMU's default CPU model (qemu64: no RDRAND) without
	// a virtio-rng device, as many real servers and VMs are: the kernel's
	// random pool starts empty and fills slowly under TCG. Otherwise the
	// VM gets -cpu max and -device virtio-rng-pci.
	NoEntropy bool
	// Log, when set, gets every console line as it arrives (the full
	// console, for a log file kept after the VM).
	Log io.Writer
}

// OVMF firmware from Debian's ovmf package: the 4 MiB build, code read-only,
// variables per VM (two guests must not share one).
var (
	OVMFCode         = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVarsTemplate = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// VM is a running QEMU process and its serial console.
type VM struct {
	cmd  *exec.Cmd
	done chan struct{}
	werr error

	mu     sync.Mutex
	out    strings.Builder
	cursor int // Expect consumes the console from here
	notify chan struct{}
	start  time.Time
}

// QEMU returns the path of qemu-system-x86_64 or an error that says how to
// install it.
func QEMU() (string, error) {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", fmt.Errorf("qemu-system-x86_64 not found: %s", InstallHint)
	}
	return p, nil
}

// Args returns the QEMU command line for o; exported so the benchmarks can
// print what they ran.
func (o Options) Args() []string {
	mem := o.Memory
	if mem == 0 {
		mem = 768
	}
	var cpu []string
	switch {
	case o.KVM:
		cpu = []string{"-accel", "kvm", "-cpu", "host"}
	case !o.NoEntropy:
		cpu = []string{"-cpu", "max"}
	}
	args := append([]string{
		"-nodefaults", "-no-user-config",
		"-machine", "q35"}, cpu...)
	args = append(args, "-smp", "1",
		"-m", fmt.Sprint(mem),
		"-display", "none", "-serial", "stdio", "-monitor", "none",
		"-no-reboot",
	)
	if !o.NoEntropy {
		args = append(args, "-device", "virtio-rng-pci")
	}
	if o.Kernel != "" {
		args = append(args, "-kernel", o.Kernel)
		app := strings.TrimSpace("console=ttyS0 panic=-1 " + o.Append)
		args = append(args, "-append", app)
	}
	if o.Initrd != "" {
		args = append(args, "-initrd", o.Initrd)
	}
	if o.UEFI {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+o.OVMFVars)
	}
	if o.Disk != "" {
		args = append(args, "-drive", "file="+o.Disk+",format=raw,if=virtio,cache=unsafe")
	}
	if o.MAC != "" {
		args = append(args, "-netdev", "hubport,id=hn0,hubid=0", "-device", "virtio-net-pci,netdev=hn0,mac="+o.MAC)
	}
	return append(args, o.Extra...)
}

// Start launches QEMU. The VM is killed when ctx ends.
func Start(ctx context.Context, o Options) (*VM, error) {
	q, err := QEMU()
	if err != nil {
		return nil, err
	}
	for _, f := range []string{o.Kernel, o.Initrd, o.Disk} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("vmboot: %w", err)
		}
	}
	cleanup := func() {}
	if o.UEFI && o.OVMFVars == "" {
		vars, err := privateVars()
		if err != nil {
			return nil, err
		}
		o.OVMFVars = vars
		cleanup = func() { os.Remove(vars) }
	}
	cmd := exec.CommandContext(ctx, q, o.Args()...)
	if o.Netns != "" {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", o.Netns, q}, o.Args()...)...)
	}
	cmd.Stdin = nil
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	vm := &VM{cmd: cmd, done: make(chan struct{}), notify: make(chan struct{}, 1), start: time.Now()}
	if err := cmd.Start(); err != nil {
		cleanup()
		return nil, fmt.Errorf("start %s: %w", q, err)
	}
	go func() {
		vm.werr = cmd.Wait()
		cleanup()
		pw.Close()
	}()
	go func() {
		defer close(vm.done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			vm.mu.Lock()
			vm.out.WriteString(line)
			vm.out.WriteByte('\n')
			vm.mu.Unlock()
			if o.Log != nil {
				fmt.Fprintln(o.Log, line)
			}
			if o.Console != nil {
				if o.Name != "" {
					fmt.Fprintf(o.Console, "%s| %s\n", o.Name, line)
				} else {
					fmt.Fprintln(o.Console, line)
				}
			}
			select {
			case vm.notify <- struct{}{}:
			default:
			}
		}
	}()
	return vm, nil
}

// Console returns everything the VM printed so far.
func (vm *VM) Console() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.out.String()
}

// Since is the time since QEMU started.
func (vm *VM) Since() time.Duration { return time.Since(vm.start) }

// ErrExited is returned by Expect when the VM stopped before printing the
// pattern.
var ErrExited = errors.New("VM exited")

// Expect waits until the console, from where the last Expect stopped,
// matches re, and returns the submatches. It fails on timeout or when the
// VM exits first; either error carries the tail of the console.
func (vm *VM) Expect(re string, timeout time.Duration) ([]string, error) {
	rx, err := regexp.Compile(re)
	if err != nil {
		return nil, err
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		vm.mu.Lock()
		s := vm.out.String()[vm.cursor:]
		if loc := rx.FindStringSubmatchIndex(s); loc != nil {
			m := rx.FindStringSubmatch(s)
			vm.cursor += loc[1]
			vm.mu.Unlock()
			return m, nil
		}
		vm.mu.Unlock()
		select {
		case <-vm.notify:
		case <-vm.done:
			// Drain: the last lines may have arrived with the exit.
			vm.mu.Lock()
			s := vm.out.String()[vm.cursor:]
			vm.mu.Unlock()
			if rx.MatchString(s) {
				continue
			}
			return nil, fmt.Errorf("waiting for %q: %w (%v)\n%s", re, ErrExited, vm.werr, Tail(vm.Console(), 40))
		case <-deadline.C:
			return nil, fmt.Errorf("waiting for %q: timeout after %v\n%s", re, timeout, Tail(vm.Console(), 40))
		}
	}
}

// Wait waits for QEMU to exit (the guest powered off) for at most timeout,
// then kills it.
func (vm *VM) Wait(timeout time.Duration) error {
	select {
	case <-vm.done:
		return nil
	case <-time.After(timeout):
		vm.Kill()
		return fmt.Errorf("VM did not power off within %v\n%s", timeout, Tail(vm.Console(), 40))
	}
}

// Done is closed when QEMU has exited and its output is read.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// ExitErr is how QEMU exited (nil for a clean exit), once Done is closed.
func (vm *VM) ExitErr() error { return vm.werr }

// Kill stops QEMU at once, like pulling the power cord.
func (vm *VM) Kill() {
	if vm.cmd.Process != nil {
		vm.cmd.Process.Kill()
	}
	<-vm.done
}

// Tail is the last n lines of a console, under a heading, for errors.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "--- console (last lines) ---\n" + strings.Join(lines, "\n")
}

// privateVars copies OVMFVarsTemplate to a temporary file for one VM.
func privateVars() (string, error) {
	if _, err := os.Stat(OVMFCode); err != nil {
		return "", fmt.Errorf("OVMF firmware: %w (apt-get install ovmf; %s)", err, InstallHint)
	}
	b, err := os.ReadFile(OVMFVarsTemplate)
	if err != nil {
		return "", fmt.Errorf("OVMF variables: %w (apt-get install ovmf; %s)", err, InstallHint)
	}
	f, err := os.CreateTemp("", "hnboot-ovmf-vars-*.fd")
	if err != nil {
		return "", err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), f.Close()
}

// KVMUsable says whether this machine can run a KVM guest: /dev/kvm opens
// read-write and answers KVM_GET_API_VERSION with 12, and a VM can be
// created. A node that exists but does not work (common in nested
// virtualization) is not usable, and the reason says why.
func KVMUsable() (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, err.Error()
	}
	defer f.Close()
	const kvmGetAPIVersion, kvmCreateVM = 0xAE00, 0xAE01
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 || v != 12 {
		return false, fmt.Sprintf("/dev/kvm: KVM_GET_API_VERSION = %d, %v (want 12)", v, errno)
	}
	fd, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return false, fmt.Sprintf("/dev/kvm: KVM_CREATE_VM: %v", errno)
	}
	syscall.Close(int(fd))
	return true, "/dev/kvm works"
}
