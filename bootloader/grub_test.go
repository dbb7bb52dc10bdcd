package bootloader

import (
	"strings"
	"testing"
)

func TestGrubConfig(t *testing.T) {
	for _, tt := range []struct {
		name    string
		o       Options
		want    []string
		notWant []string
	}{
		{
			name: "seed defaults",
			want: []string{
				"insmod part_gpt\n", "insmod fat\n", "insmod ext2\n", "insmod loopback\n",
				"set timeout=1\n",
				"menuentry 'hnboot rescue shell (hn-root.img, hn.init=/bin/sh)' {",
				"ro console=ttyS0 hn.init=/bin/sh hn.debug\n",
				"if [ \"$grub_platform\" = pc ]; then\n\tserial --unit=0 --speed=115200\n\tterminal_input console serial\n\tterminal_output console serial\nfi\n",
				"search --no-floppy --label hostpart --set=root\n",
				"loopback loop ($root)/hn-root.img\n",
				"linux (loop)/boot/vmlinuz real_root=/hn-root.img raw_loop_root_host_partition=LABEL=hostpart hn.hostpart=LABEL=hostpart ro console=ttyS0\n",
				"initrd (loop)/boot/initramfs\n",
				"loopback loop ($root)/hn-root-old.img\n",
				"real_root=/hn-root-old.img raw_loop_root_host_partition=LABEL=hostpart hn.hostpart=LABEL=hostpart hn.image=hn-root-old.img ro",
			},
		},
		{
			name:    "no old entry, extra args",
			o:       Options{OldImage: "-", Extra: "hn.debug", Timeout: -1, NoRescue: true},
			want:    []string{"set timeout=0\n", "console=ttyS0 hn.debug\n"},
			notWant: []string{"hn-root-old.img", "rescue"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := GrubConfig(tt.o)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("GrubConfig(%+v) = \n%s\nwant it to contain %q", tt.o, got, w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("GrubConfig(%+v) = \n%s\nwant no %q", tt.o, got, w)
				}
			}
			if n := strings.Count(got, "{"); n != strings.Count(got, "}") {
				t.Errorf("GrubConfig(%+v) has unbalanced braces", tt.o)
			}
		})
	}
}
