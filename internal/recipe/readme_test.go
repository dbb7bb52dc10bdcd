package recipe

import (
	"os"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/readme"
)

// The README's complete recipe parses, uses every key, and the key
// table documents every key and nothing else.
func TestReadmeRecipe(t *testing.T) {
	md, err := readme.Read()
	if err != nil {
		t.Fatal(err)
	}
	b, err := readme.Block(md, "# recipe: web.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("web.yaml", []byte(b)); err != nil {
		t.Errorf("the README's recipe does not parse: %v", err)
	}
	for _, k := range Keys {
		if !strings.Contains(b, "\n"+k+":") {
			t.Errorf("the README's recipe lacks key %s", k)
		}
	}
	rows, err := readme.Table(md, "| recipe key | default | meaning |")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, r := range rows {
		for _, k := range strings.Split(r[0], ",") {
			documented[strings.Trim(strings.TrimSpace(k), "`")] = true
		}
	}
	for _, k := range Keys {
		if !documented[k] {
			t.Errorf("the README's recipe table lacks key %s", k)
		}
		delete(documented, k)
	}
	for k := range documented {
		t.Errorf("the README's recipe table documents %q, which recipes do not have", k)
	}
}

// The example pipeline's recipe parses.
func TestExampleRecipe(t *testing.T) {
	r, err := ReadFile("../../examples/ci/web.yaml")
	if err != nil && !strings.Contains(err.Error(), "files/imaged") {
		t.Fatalf("examples/ci/web.yaml: %v", err)
	}
	if err == nil && r.Name != "web" {
		t.Errorf("examples/ci/web.yaml: name %q, want web", r.Name)
	}
	if _, err := Parse("web.yaml", mustRead(t, "../../examples/ci/web.yaml")); err != nil {
		t.Errorf("examples/ci/web.yaml: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
