package testvm

import (
	"context"

	"github.com/hnboot/hnboot/internal/vmboot"
)

// The QEMU harness is internal/vmboot (mkimage test boots with it too);
// these names keep the tests, the demo and the benchmarks as they were.

// InstallHint is what a missing tool's error tells the user to run.
const InstallHint = vmboot.InstallHint

// Options describe one VM (vmboot.Options).
type Options = vmboot.Options

// VM is a running QEMU process and its serial console.
type VM = vmboot.VM

// OVMF firmware from Debian's ovmf package (vmboot's).
var (
	OVMFCode         = vmboot.OVMFCode
	OVMFVarsTemplate = vmboot.OVMFVarsTemplate
)

// ErrExited is returned by Expect when the VM stopped before printing the
// pattern.
var ErrExited = vmboot.ErrExited

// QEMU returns the path of qemu-system-x86_64 or an error that says how to
// install it.
func QEMU() (string, error) { return vmboot.QEMU() }

// Start launches QEMU. The VM is killed when ctx ends.
func Start(ctx context.Context, o Options) (*VM, error) { return vmboot.Start(ctx, o) }

func tail(s string, n int) string { return vmboot.Tail(s, n) }
