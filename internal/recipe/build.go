package recipe

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// TreeOptions run a recipe's plan.
type TreeOptions struct {
	PlanOptions
	Mmdebstrap     string    // the program; default "mmdebstrap" from PATH
	Stdout, Stderr io.Writer // mmdebstrap's output
}

// TreeResult says what a tree build did.
type TreeResult struct {
	Plan     *Plan
	Took     time.Duration
	Cache    CacheStats // before the build
	CacheNew CacheStats // what the build added to the cache
}

// CacheStats counts the packages in a cache directory.
type CacheStats struct {
	Packages int
	Bytes    int64
}

// Tree builds the recipe's tree as a tarball (o.Out) with mmdebstrap.
func (r *Recipe) Tree(ctx context.Context, o TreeOptions) (*TreeResult, error) {
	root, err := os.OpenRoot(r.Dir)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	defer root.Close()
	keys := map[string]string{}
	for _, s := range r.Sources {
		if s.Key == "" {
			continue
		}
		b, err := root.ReadFile(s.Key)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: sources: key: %w", r.File, s.Line, unwrapPath(err))
		}
		if keys[s.Key], err = armorKey(b); err != nil {
			return nil, fmt.Errorf("%s:%d: sources: key %s: %w", r.File, s.Line, s.Key, err)
		}
	}
	var debs []string
	if r.Debs != "" {
		if debs, err = r.DebFiles(root); err != nil {
			return nil, fmt.Errorf("%s:%d: debs: %w", r.File, r.Lines["debs"], unwrapPath(err))
		}
	}
	p, err := r.Plan(o.PlanOptions, keys, debs)
	if err != nil {
		return nil, err
	}
	for name, b := range p.Stage {
		if err := writeStage(o.Stage, name, b); err != nil {
			return nil, err
		}
	}
	for name, from := range p.Copy {
		b, err := root.ReadFile(from)
		if err != nil {
			return nil, fmt.Errorf("recipe %s: %w", r.File, unwrapPath(err))
		}
		if err := writeStage(o.Stage, name, b); err != nil {
			return nil, err
		}
	}
	prog := o.Mmdebstrap
	if prog == "" {
		prog = "mmdebstrap"
	}
	if prog, err = exec.LookPath(prog); err != nil {
		return nil, fmt.Errorf("mmdebstrap not found: apt-get install mmdebstrap (scripts/deps.sh installs it)")
	}
	if len(debs) > 0 {
		if _, err := os.Stat(FileMirrorHook); err != nil {
			return nil, fmt.Errorf("debs: mmdebstrap's hook %s: %w (mmdebstrap 1.x has it)", FileMirrorHook, err)
		}
	}
	res := &TreeResult{Plan: p}
	if o.Cache != "" {
		if err := os.MkdirAll(o.Cache, 0o755); err != nil {
			return nil, fmt.Errorf("package cache: %w", err)
		}
		res.Cache = cacheStats(o.Cache)
	}
	cmd := exec.CommandContext(ctx, prog, p.Args...)
	// TMPDIR: mmdebstrap's working tree goes beside the output, where
	// there is room for the image anyway.
	cmd.Env = append(append(os.Environ(), p.Env...), "TMPDIR="+o.Stage)
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: mmdebstrap %s: %v (its messages are above)", r.File, r.Suite, err)
	}
	res.Took = time.Since(start)
	if o.Cache != "" {
		after := cacheStats(o.Cache)
		res.CacheNew = CacheStats{Packages: after.Packages - res.Cache.Packages, Bytes: after.Bytes - res.Cache.Bytes}
	}
	return res, nil
}

// CommandLine is the plan as a shell command, for logs.
func (p *Plan) CommandLine() string {
	q := make([]string, len(p.Args))
	for i, a := range p.Args {
		q[i] = shq(a)
	}
	return strings.Join(p.Env, " ") + " mmdebstrap " + strings.Join(q, " ")
}

func writeStage(stage, name string, b []byte) error {
	p := filepath.Join(stage, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	return nil
}

func cacheStats(dir string) CacheStats {
	var s CacheStats
	m, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	for _, f := range m {
		if st, err := os.Stat(f); err == nil {
			s.Packages++
			s.Bytes += st.Size()
		}
	}
	return s
}
