package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hnboot/hnboot/agent"
	"github.com/hnboot/hnboot/internal/cli"
	"github.com/hnboot/hnboot/internal/hostpart"
	"github.com/hnboot/hnboot/internal/nic"
	"github.com/hnboot/hnboot/internal/stage"
	"github.com/hnboot/hnboot/supervisor"
)

const agentUsage = `Usage: imaged agent [--server URL] [--config FILE] [--hostpart DIR] [--mac MAC] [--reboot POLICY] [--once]

Runs on each host: checks in with the fleet server at start and every
interval, stages the image the server assigns as hn-root-new.img, confirms
a trial boot once the health checks pass, reverts when the server asks,
reboots according to the reboot policy, and supervises local services.
Configuration: ` + agent.DefaultConfigFile + ` (YAML; see package agent).
`

func runAgent(ctx context.Context, name string, args []string, std cli.IO) error {
	fs := cli.NewFlagSet(name, agentUsage, std)
	server := fs.String("server", "", "fleet server URL, e.g. http://imaged:8080 (overrides the config's server)")
	config := fs.String("config", agent.DefaultConfigFile, "configuration file")
	hp := fs.String("hostpart", "", "hostpart directory (default: the /hostpart mount)")
	mac := fs.String("mac", "", "this host's MAC (default: the config's, else the first Ethernet NIC)")
	reboot := fs.String("reboot", "", "reboot policy, overrides the config: never, immediate, or window [DAYS] HH:MM-HH:MM")
	once := fs.Bool("once", false, "one round (check in, act, report), then exit; a download it starts is finished first, and its failure is exit status 1")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := fs.WantArgs(0, 0, ""); err != nil {
		return err
	}
	cfg, err := agent.LoadConfig(*config)
	if err != nil {
		return err
	}
	if *server != "" {
		cfg.Server = *server
	}
	if *hp != "" {
		cfg.Hostpart = *hp
	}
	if *mac != "" {
		cfg.MAC = *mac
	}
	if *reboot != "" {
		cfg.Reboot = *reboot
	}
	if cfg.Server == "" {
		return fmt.Errorf("agent: no server: pass --server URL or set server: in %s", *config)
	}
	policy, err := agent.ParsePolicy(cfg.Reboot)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	dir, err := hostpart.Locator{Dir: cfg.Hostpart}.Locate()
	if err != nil {
		return err
	}
	if cfg.MAC == "" {
		_, m, err := nic.FirstEthernet("/sys/class/net")
		if err != nil || m == "" {
			return fmt.Errorf("agent: cannot find this host's MAC (%v): set mac: in %s or pass --mac", err, *config)
		}
		cfg.MAC = m
	}
	token := ""
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("agent: token_file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	keys, err := stage.ReadKeys(append([]string{cfg.PublicKey}, cfg.TrustedKeys...)...)
	if err != nil {
		return fmt.Errorf("agent: public_key/trusted_keys in %s: %w", *config, err)
	}
	log := slog.New(slog.NewTextHandler(std.Stderr, nil))
	hostname, _ := os.Hostname()
	a := &agent.Agent{
		Dir: dir, Server: &agent.HTTPServer{Base: cfg.Server, Token: token},
		MAC: cfg.MAC, Hostname: hostname, Config: cfg, Policy: policy, Keys: keys, Log: log,
	}
	if len(keys.Keys) > 0 {
		log.Info("agent: staged images must be signed", "trusted", keys.String())
	}
	if len(cfg.Services) > 0 {
		sv, err := supervisor.New(cfg.Services, supervisor.Options{LogDir: cfg.LogDir, Logger: log})
		if err != nil {
			return fmt.Errorf("agent: services in %s: %w", *config, err)
		}
		a.Services = sv
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *once {
		return a.Once(ctx)
	}
	return a.Run(ctx)
}
