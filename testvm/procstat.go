package testvm

import "github.com/prometheus/procfs"

// PeakRSS is the peak resident set size (VmHWM) of process pid in KiB, or
// 0 when the process is gone: the benches report it beside their times.
func PeakRSS(pid int) int64 {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0
	}
	return int64(st.VmHWM / 1024)
}
