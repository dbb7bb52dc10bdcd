package kmodules

import (
	"os"
	"os/exec"
)

var execLookPath = exec.LookPath

func compressFile(tool, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(tool, "-c")
	cmd.Stdin, cmd.Stdout = in, out
	return cmd.Run()
}
