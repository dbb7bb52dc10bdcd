package fleet

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hnboot/hnboot/internal/checkin"
	"github.com/hnboot/hnboot/internal/manifest"
)

// imaged fleet packages answers from the package lists of the images the
// hosts reported running; hosts whose image has no list are named.
func TestPackagesFromBootedImages(t *testing.T) {
	e := newSimEnv(t, 6, "", "")
	for v, ssl := range map[string]string{"1": "3.0.15-1~deb12u1", "2": "3.0.16-1~deb12u1"} {
		l := manifest.NewPackageList(strings.TrimPrefix(e.digests[v], "sha256:"), manifest.SourceDpkg, "",
			[]manifest.Package{{Name: "libssl3", Version: ssl, Arch: "amd64"}, {Name: "bash", Version: "5.2.15-2+b7", Arch: "amd64"}})
		if err := l.WriteFile(manifest.PackagesFor(filepath.Join(e.dir, "base-"+v+".img"))); err != nil {
			t.Fatal(err)
		}
	}
	// h0000, h0001 run 1; h0002, h0003 run 2; h0004 runs 3 (no list); h0005 never checked in.
	for i, v := range []string{"1", "1", "2", "2", "3"} {
		if err := e.f.Checkin(&checkin.Checkin{MAC: macN(i), Source: checkin.SourceAgent, Images: checkin.Slots{Current: e.digests[v]}}); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := e.f.Packages("libssl3", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Versions) != 2 || rep.Versions[0].Version != "3.0.15-1~deb12u1" || strings.Join(rep.Versions[0].Hosts, ",") != "h0000,h0001" ||
		strings.Join(rep.Versions[1].Images, ",") != "base@2" || strings.Join(rep.Versions[1].Hosts, ",") != "h0002,h0003" {
		t.Errorf("Packages(libssl3) versions = %+v", rep.Versions)
	}
	if len(rep.Unknown) != 2 || !strings.Contains(rep.Unknown[0].Reason, "no package list") || rep.Unknown[1].Reason != "never checked in" {
		t.Errorf("Packages(libssl3) unknown = %+v", rep.Unknown)
	}
	if rep, _ := e.f.Packages("libssl3", "3.0.16-1~deb12u1", map[string]string{"rack": "r2"}); len(rep.Versions) != 1 || strings.Join(rep.Versions[0].Hosts, ",") != "h0002" {
		t.Errorf("Packages(libssl3 3.0.16, rack=r2) = %+v", rep)
	}
	if rep, _ := e.f.Packages("curl", "", nil); len(rep.Versions) != 0 || rep.Without != 4 {
		t.Errorf("Packages(curl) = %+v, want no versions, 4 hosts without", rep)
	}
	// Over the API, with a label selector, and the host's own view.
	resp, err := http.Get(e.srv.URL + "/api/hosts?label=rack=r1")
	if err != nil {
		t.Fatal(err)
	}
	var hs []HostSummary
	json.NewDecoder(resp.Body).Decode(&hs)
	resp.Body.Close()
	if len(hs) != 2 || hs[0].Hostname != "h0001" || hs[1].Hostname != "h0005" || hs[0].Labels["rack"] != "r1" {
		t.Errorf("GET /api/hosts?label=rack=r1 = %+v", hs)
	}
	inv, err := e.f.HostInventory("h0002")
	if err != nil || inv.Packages == nil || len(inv.Packages.Packages) != 2 || inv.Current.Ref != "base@2" {
		t.Errorf("HostInventory(h0002) = %+v, %v", inv, err)
	}
}
