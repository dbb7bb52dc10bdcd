package fleet

import "github.com/hnboot/hnboot/pxe"

// The contract with the boot server: *Fleet is a pxe.Directory and a
// pxe.Recorder, and its Checkin is a pxe.CheckinHandler.
type (
	HostBoot = pxe.HostBoot
	ImageRef = pxe.ImageRef
	Event    = pxe.Event
)

var (
	_ pxe.Directory      = (*Fleet)(nil)
	_ pxe.Recorder       = (*Fleet)(nil)
	_ pxe.CheckinHandler = (*Fleet)(nil).Checkin
)
