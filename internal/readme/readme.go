// Package readme finds the examples and tables of the project's README.md,
// so that tests can hold the documentation to the code: an example that
// no longer loads, or a field the reference misses, fails a test instead
// of misleading the next reader.
package readme

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Read returns README.md of the module, looked for from the working
// directory upwards (a test runs in its package's directory).
func Read() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			b, err := os.ReadFile(filepath.Join(dir, "README.md"))
			return string(b), err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("readme: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Block returns the fenced code block whose first line is first, without
// its fences. The README marks each tested example with such a line (a
// comment naming the file, e.g. "# /etc/hnboot/tokens").
func Block(md, first string) (string, error) {
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "```") {
			continue
		}
		j := i + 1
		for j < len(lines) && !strings.HasPrefix(lines[j], "```") {
			j++
		}
		if i+1 < j && lines[i+1] == first {
			return strings.Join(lines[i+1:j], "\n") + "\n", nil
		}
		i = j
	}
	return "", fmt.Errorf("README.md: no code block starting with %q", first)
}

// Table returns the body rows of the table whose header row begins with
// header (e.g. "| method | path |"), each row split into trimmed cells.
func Table(md, header string) ([][]string, error) {
	lines := strings.Split(md, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, header) {
			continue
		}
		var rows [][]string
		for _, r := range lines[i+2:] { // past the |---| line
			if !strings.HasPrefix(r, "|") {
				break
			}
			cells := strings.Split(strings.Trim(strings.TrimSpace(r), "|"), "|")
			for k := range cells {
				cells[k] = strings.TrimSpace(cells[k])
			}
			rows = append(rows, cells)
		}
		return rows, nil
	}
	return nil, fmt.Errorf("README.md: no table with the header %q", header)
}
