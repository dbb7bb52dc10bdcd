package recipe

import (
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
