package x
import (
 _ "github.com/u-root/u-root/pkg/kmodule"
 _ "github.com/u-root/u-root/pkg/mount"
 _ "github.com/u-root/u-root/pkg/boot/kexec"
 _ "github.com/diskfs/go-diskfs"
 _ "github.com/freddierice/go-losetup"
 _ "github.com/cavaliergopher/cpio"
 _ "golang.org/x/crypto/ssh"
)
